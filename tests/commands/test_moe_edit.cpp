// Fold-in, remove and resolve against merges from scratch with the same shared weights, and the
// cases fold-in must refuse.
#include <gtest/gtest.h>

#include <fstream>

#include "moe_edit.hpp"
#include "hdf5_util.hpp"
#include "merge.hpp"
#include "merge_inputs.hpp"
#include "mixtral.hpp"
#include "test_util.hpp"
#include "verify.hpp"

namespace {

using namespace dume;
using namespace dume::test;
namespace fs = std::filesystem;

// Four tiny experts d0..d3 with corpora, written once for the suite.
class Dynamic : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = make_suite_dir("dynamic");
    write_merge_inputs(dir_, 4, DType::BF16);
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }

  static std::string experts(std::initializer_list<int> which) {
    std::string yaml = "experts:\n";
    for (int e : which) {
      const std::string n = std::string("d").append(std::to_string(e));  // GCC 12: false -Wrestrict on "d" + string
      yaml += "  - {name: " + n + ", checkpoint: " + n + ", calibration: {path: " + n + ".bin, format: text-bytes}}\n";
    }
    return yaml;
  }
  static std::string settings(const std::string& output) {
    return "router: {lambda: 0.01, context_tokens: 24}\ncalibration: {sequence_length: 32, batch_sequences: 3}\n"
           "compute: {threads: 1}\noutput: " + output + "\n";
  }
  static MergeConfig config(const std::string& yaml) { return merge_config_parse(yaml, dir_ / "c.yaml"); }
  static void merge(const std::string& yaml) { run_merge(config(yaml), true); }

  // Same domains, statistics to 1e-9, routers to f32 rounding, identical shared and expert bytes.
  static void expect_same_moe(const std::string& a, const std::string& b) {
    const MoeInfo ia = read_moe_info(dir_ / a), ib = read_moe_info(dir_ / b);
    ASSERT_EQ(ia.experts, ib.experts);
    EXPECT_EQ(ia.shared_hash, ib.shared_hash);
    const Statistics sa = read_statistics(dir_ / a / "stats.h5"), sb = read_statistics(dir_ / b / "stats.h5");
    for (std::size_t e = 0; e < sa.domains.size(); ++e)
      for (std::size_t l = 0; l < 3; ++l) {
        const auto& x = sa.domains[e].A[l];
        const auto& y = sb.domains[e].A[l];
        EXPECT_LE((x - y).cwiseAbs().maxCoeff() / y.cwiseAbs().maxCoeff(), 1e-9);
      }
    const H5Id fa = h5::open_file(dir_ / a / "moe.h5"), fb = h5::open_file(dir_ / b / "moe.h5");
    const auto E = static_cast<std::int64_t>(ia.experts.size());
    for (std::int64_t l = 0; l < 3; ++l) {
      const RouterSolution ra = build_router(ia.router, sa, l), rb = build_router(ib.router, sb, l);
      EXPECT_LE((ra.weight - rb.weight).cwiseAbs().maxCoeff() / rb.weight.cwiseAbs().maxCoeff(), 1e-9);
      const std::int64_t shape[] = {E, 48};
      const auto wa = h5::read_f32(fa.get(), moe_path::layer(l, "router/weight"), shape);
      const auto wb = h5::read_f32(fb.get(), moe_path::layer(l, "router/weight"), shape);
      for (std::size_t i = 0; i < wa.size(); ++i) EXPECT_LE(std::abs(wa[i] - wb[i]), 6e-8f * std::abs(wb[i]));
      for (std::int64_t e = 0; e < E; ++e)
        for (const char* proj : {"gate_proj", "up_proj", "down_proj"})
          EXPECT_EQ(h5::read_raw(fa.get(), moe_path::expert(l, e, proj)), h5::read_raw(fb.get(), moe_path::expert(l, e, proj)));
    }
    const SharedWeights layout;  // only the paths are visited
    for_each_shared_tensor(ia.config, layout, [&](const std::string&, const std::string& path,
                                                  const std::vector<std::int64_t>&, const auto&) {
      EXPECT_EQ(h5::read_raw(fa.get(), path), h5::read_raw(fb.get(), path)) << path;
    });
  }

  static inline fs::path dir_;
};

TEST_F(Dynamic, FoldInEqualsAMergeWithTheSameSharedWeights) {
  merge(experts({0, 1, 2}) + settings("m3"));
  run_fold_in(config("moe: m3\n" + experts({3}) +
                     "calibration: {sequence_length: 32, batch_sequences: 3}\ncompute: {threads: 1}\noutput: f4\n"),
              false, false);
  merge(experts({0, 1, 2, 3}) + "shared: {moe: m3}\n" + settings("m4s"));
  expect_same_moe("f4", "m4s");
  // The input MoE is untouched and the fold-in recorded every expert for a later --reaverage.
  EXPECT_EQ(read_moe_info(dir_ / "m3").experts.size(), 3u);
  EXPECT_EQ(merge_config_read(dir_ / "f4" / "merge.yaml").experts.size(), 4u);
}

TEST_F(Dynamic, RemoveEqualsAMergeWithoutTheDomain) {
  merge(experts({0, 1, 2, 3}) + settings("m4"));
  run_remove(dir_ / "m4", "d1", dir_ / "r3", false);
  merge(experts({0, 2, 3}) + "shared: {moe: m4}\n" + settings("m3s"));
  expect_same_moe("r3", "m3s");
}

TEST_F(Dynamic, ResolveReproducesTheRoutersAndSolvesNewSettings) {
  merge(experts({0, 1, 2}) + settings("base"));
  run_resolve(dir_ / "base", {}, dir_ / "same", false);
  const H5Id base = h5::open_file(dir_ / "base" / "moe.h5"), same = h5::open_file(dir_ / "same" / "moe.h5");
  for (std::int64_t l = 0; l < 3; ++l)
    EXPECT_EQ(h5::read_raw(base.get(), moe_path::layer(l, "router/weight")),
              h5::read_raw(same.get(), moe_path::layer(l, "router/weight")));

  ResolveOverrides o;
  o.lambda = 0.5;
  o.balance = true;
  run_resolve(dir_ / "base", o, dir_ / "new", false);
  const Statistics stats = read_statistics(dir_ / "base" / "stats.h5");
  const Model moe = read_moe_model(dir_ / "new");
  for (std::int64_t l = 0; l < 3; ++l) {
    MatrixXdRow A = MatrixXdRow::Zero(49, 49);  // balanced by hand: each domain / its tokens
    Eigen::MatrixXd B(49, 3);
    for (std::size_t e = 0; e < 3; ++e) {
      const double n = static_cast<double>(stats.domains[e].tokens);
      A += stats.domains[e].A[static_cast<std::size_t>(l)] / n;
      B.col(static_cast<Eigen::Index>(e)) = stats.domains[e].A[static_cast<std::size_t>(l)].col(48) / n;
    }
    const RouterSolution expected = ridge_solve(A, B, 0.5, true, l);
    EXPECT_TRUE(moe.routers[static_cast<std::size_t>(l)].weight.isApprox(expected.weight.cast<float>(), 1e-6f));
  }
  EXPECT_EQ(read_moe_info(dir_ / "new").router.lambda, 0.5);
  EXPECT_TRUE(read_moe_info(dir_ / "new").router.balance);

  // A Gaussian router: means, constants and stacked factors stored in f32 and read back.
  ResolveOverrides gaussian;
  gaussian.method = RouterMethod::gaussian;
  run_resolve(dir_ / "base", gaussian, dir_ / "gaussian", false);
  const Model g = read_moe_model(dir_ / "gaussian");
  for (std::int64_t l = 0; l < 3; ++l) {
    const RouterSolution expected = gaussian_solve(stats, 0.01, l);
    const Router& r = g.routers[static_cast<std::size_t>(l)];
    EXPECT_EQ(r.weight, expected.weight.cast<float>());
    EXPECT_EQ(r.bias, expected.bias.cast<float>());
    EXPECT_EQ(r.quadratic, expected.quadratic.cast<float>());
  }
  EXPECT_EQ(read_moe_info(dir_ / "gaussian").router.method, RouterMethod::gaussian);
}

// lambda and temperature `auto`: the held-out batches stay out of A, their sampled MLP inputs
// are stored, and resolve and fold-in choose again from them.
TEST_F(Dynamic, AutoSettingsFromTheHeldOutSplit) {
  const std::string calibration = "calibration: {sequence_length: 32, batch_sequences: 3, heldout_fraction: 0.25, heldout_tokens: 40}\n";
  merge(experts({0, 1, 2}) + "router: {lambda: auto, temperature: auto, context_tokens: 24}\n" + calibration +
        "compute: {threads: 1}\noutput: auto3\n");
  // 128 windows in 43 batches of 3; batches 3, 7, ..., 39 held out: 30 windows of 24 tokens,
  // every 18th kept (40 rows).
  const Statistics stats = read_statistics(dir_ / "auto3" / "stats.h5");
  for (const auto& d : stats.domains) {
    EXPECT_EQ(d.tokens, (128 - 30) * 24) << d.name;
    ASSERT_EQ(d.heldout.size(), 3u);
    EXPECT_EQ(d.heldout[2].rows(), 40) << d.name;
  }
  const MoeInfo info = read_moe_info(dir_ / "auto3");
  EXPECT_TRUE(info.router.auto_lambda);
  EXPECT_TRUE(info.router.auto_temperature);
  ASSERT_EQ(info.router.layer_lambda.size(), 3u);
  EXPECT_TRUE(merge_config_read(dir_ / "auto3" / "merge.yaml").router.auto_lambda);  // merge.yaml says auto

  // Resolve chooses the same from the same statistics; an explicit lambda turns auto off.
  run_resolve(dir_ / "auto3", {}, dir_ / "auto3-same", false);
  const H5Id a = h5::open_file(dir_ / "auto3" / "moe.h5"), b = h5::open_file(dir_ / "auto3-same" / "moe.h5");
  for (std::int64_t l = 0; l < 3; ++l)
    EXPECT_EQ(h5::read_raw(a.get(), moe_path::layer(l, "router/weight")), h5::read_raw(b.get(), moe_path::layer(l, "router/weight")));
  EXPECT_EQ(read_moe_info(dir_ / "auto3-same").router.temperature, info.router.temperature);
  ResolveOverrides fixed;
  fixed.lambda = 0.5;
  run_resolve(dir_ / "auto3", fixed, dir_ / "auto3-fixed", false);
  EXPECT_FALSE(read_moe_info(dir_ / "auto3-fixed").router.auto_lambda);
  EXPECT_TRUE(read_moe_info(dir_ / "auto3-fixed").router.layer_lambda.empty());

  // A new domain is split as the MoE's merge.yaml says, and every layer chosen again.
  run_fold_in(config("moe: auto3\n" + experts({3}) + "calibration: {sequence_length: 32}\ncompute: {threads: 1}\noutput: auto4\n"),
              false, false);
  EXPECT_EQ(read_moe_info(dir_ / "auto4").router.layer_lambda.size(), 3u);
  EXPECT_EQ(read_statistics(dir_ / "auto4" / "stats.h5").domains[3].heldout[0].rows(), 40);

  // The same for a Gaussian router: resolved to one, then a domain folded into it.
  ResolveOverrides gaussian;
  gaussian.method = RouterMethod::gaussian;
  run_resolve(dir_ / "auto3", gaussian, dir_ / "auto3-gaussian", false);
  run_fold_in(config("moe: auto3-gaussian\n" + experts({3}) +
                     "calibration: {sequence_length: 32}\ncompute: {threads: 1}\noutput: auto4-gaussian\n"),
              false, false);
  const Model folded = read_moe_model(dir_ / "auto4-gaussian");
  EXPECT_EQ(folded.routers[1].quadratic.rows(), 4 * 48);
  EXPECT_EQ(read_moe_info(dir_ / "auto4-gaussian").router.layer_lambda.size(), 3u);
  // dume verify knows the quadratic factors, the held-out rows and the chosen lambdas.
  for (const char* moe : {"auto3", "auto4-gaussian"}) {
    const VerifyReport report = verify_moe(dir_ / moe);
    EXPECT_TRUE(report.problems.empty()) << moe << ": " << (report.problems.empty() ? "" : report.problems[0]);
  }

  // Without a held-out split, auto is refused before any work.
  expect_error_with([&] { config(experts({0, 1}) + "router: {lambda: auto}\noutput: o\n"); },
                    {"router.lambda or router.temperature 'auto'", "heldout_fraction"});
  merge(experts({0, 1}) + settings("plain2"));
  ResolveOverrides tuned;
  tuned.auto_lambda = true;
  expect_error_with([&] { run_resolve(dir_ / "plain2", tuned, dir_ / "plain2-auto", false); },
                    {"domain 'd0' has no held-out tokens"});
  EXPECT_FALSE(fs::exists(dir_ / "plain2-auto"));
}

// router.expert_attention end to end: the MoE stores each expert's own attention (its
// checkpoint's bytes), dume verify accepts it, fold-in adds the new expert's, resolve keeps or
// drops it, and what needs one attention per layer refuses it.
TEST_F(Dynamic, ExpertAttentionThroughMergeFoldInAndResolve) {
  const std::string attention = "router: {lambda: 0.01, context_tokens: 24, routing: mean+layer:0, expert_attention: true}\n"
                                "calibration: {sequence_length: 32, batch_sequences: 3}\ncompute: {threads: 1}\n";
  merge(experts({0, 1, 2}) + attention + "output: att3\n");
  const auto stored_equals_checkpoint = [&](const std::string& moe, std::int64_t e) {
    const HfCheckpoint expert(dir_ / ("d" + std::to_string(e)));
    const H5Id file = h5::open_file(dir_ / moe / "moe.h5");
    for (std::int64_t l = 0; l < 3; ++l)
      for (const char* proj : {"q_proj", "k_proj", "v_proj", "o_proj"}) {
        const std::string name = hf::layer(l, std::string("self_attn.") + proj + ".weight");
        const SafetensorsFile* shard = nullptr;
        const TensorInfo& info = expert.info(name, &shard);
        const auto original = shard->data(info);
        const auto stored = h5::read_raw(file.get(), moe_path::expert(l, e, std::string("self_attn/") + proj));
        EXPECT_TRUE(std::equal(stored.begin(), stored.end(), original.begin(), original.end())) << moe << " " << name;
      }
  };
  for (std::int64_t e = 0; e < 3; ++e) stored_equals_checkpoint("att3", e);
  EXPECT_TRUE(read_moe_info(dir_ / "att3").router.expert_attention);
  EXPECT_TRUE(merge_config_read(dir_ / "att3" / "merge.yaml").router.expert_attention);
  EXPECT_EQ(read_moe_model(dir_ / "att3").expert_attention.at(2).size(), 3u);
  EXPECT_TRUE(verify_moe(dir_ / "att3").problems.empty());

  run_fold_in(config("moe: att3\n" + experts({3}) + "calibration: {sequence_length: 32}\ncompute: {threads: 1}\noutput: att4\n"),
              false, false);
  for (std::int64_t e = 0; e < 4; ++e) stored_equals_checkpoint("att4", e);
  EXPECT_TRUE(verify_moe(dir_ / "att4").problems.empty());

  ResolveOverrides token;
  token.routing = Routing::parse("token");
  expect_error_with([&] { run_resolve(dir_ / "att3", token, dir_ / "att3-token", false); },
                    {"routing 'token'", "one routing decision taken at layer 0", "--expert-attention false"});
  token.expert_attention = false;
  run_resolve(dir_ / "att3", token, dir_ / "att3-shared", false);
  EXPECT_FALSE(read_moe_info(dir_ / "att3-shared").router.expert_attention);
  EXPECT_FALSE(h5::exists(h5::open_file(dir_ / "att3-shared" / "moe.h5").get(), moe_path::expert(0, 0, "self_attn")));
  EXPECT_TRUE(verify_moe(dir_ / "att3-shared").problems.empty());
  expect_error_with([&] { export_mixtral(dir_ / "att3", dir_ / "att3-mixtral", ExportOptions{}, false); },
                    {"its own attention", "--expert-attention false"});
  expect_error_with([&] { config(experts({0, 1}) + "router: {expert_attention: true}\noutput: o\n"); },
                    {"router.expert_attention needs one routing decision taken at layer 0", "mean+layer:0"});
  // An index that keeps expert attention but routes per token is refused when read.
  fs::copy(dir_ / "att3", dir_ / "att3-tampered", fs::copy_options::recursive);
  {
    const H5Id index(H5Fopen((dir_ / "att3-tampered" / "moe.h5").c_str(), H5F_ACC_RDWR, H5P_DEFAULT));
    ASSERT_GE(H5Adelete(index.get(), "routing"), 0);
    h5::write_attribute(index.get(), "routing", std::string("token"));
  }
  expect_error_with([&] { read_moe_info(dir_ / "att3-tampered"); },
                    {"att3-tampered/moe.h5: expert_attention with routing 'token'", "no decision at layer 0"});
}

TEST_F(Dynamic, FoldInRefusals) {
  merge(experts({0, 1}) + settings("two"));
  const std::string fold = "moe: two\n" + experts({3}) + "calibration: {sequence_length: 32}\n";
  const auto refused = [&](const std::string& yaml, const std::string& output, std::initializer_list<std::string> parts) {
    expect_error_with([&] { run_fold_in(config(yaml + "output: " + output + "\n"), false, false); }, parts);
    if (output != "two" && output != "exists") {
      EXPECT_FALSE(fs::exists(dir_ / output)) << output;
    }
  };
  refused("moe: two\n" + experts({1}) + "calibration: {sequence_length: 32}\n", "o1", {"domain 'd1' is already in"});
  refused(fold + "router: {lambda: 1}\n", "o2", {"fold-in keeps the MoE's shared weights and router settings"});
  refused("moe: two\n" + experts({3}) + "calibration: {sequence_length: 16}\n", "o3",
          {"sequence_length 16 is shorter than the MoE's context_tokens 24"});
  refused(fold, "two", {"is the MoE", "never writes over its inputs"});
  ModelConfig wide = tiny_config();
  wide.intermediate_size = 80;
  wide.json_text = model_config_to_json(wide);
  save_dense_checkpoint(random_model(wide, 5), DType::BF16, dir_ / "wide");
  refused("moe: two\nexperts:\n  - {name: w, checkpoint: wide, calibration: {path: d3.bin, format: text-bytes}}\n"
          "calibration: {sequence_length: 32}\n",
          "o5", {"expert 'w'", "does not match the MoE", "intermediate_size 96 vs 80"});
  fs::create_directories(dir_ / "exists");
  refused(fold, "exists", {"exists; pass --force"});
  // stats.h5 made with other shared weights
  fs::copy(dir_ / "two", dir_ / "tampered", fs::copy_options::recursive);
  {
    H5Id stats(H5Fopen((dir_ / "tampered" / "stats.h5").c_str(), H5F_ACC_RDWR, H5P_DEFAULT));
    h5::write_attribute(stats.get(), "shared_hash", std::string("0000000000000000"));
  }
  refused("moe: tampered\n" + experts({3}) + "calibration: {sequence_length: 32}\n", "o4",
          {"stats.h5 was made with other shared weights"});
  EXPECT_EQ(read_moe_info(dir_ / "two").experts.size(), 2u);  // never modified
}

}  // namespace
