// The merge end to end on tiny real experts (bf16 checkpoints written by the test): statistics
// and routers against float64 references, the HDF5 layout and round trip, the MoE forward
// against an independent float64 forward, and every check before any work.
#include <gtest/gtest.h>

#include <Eigen/QR>
#include <fstream>

#include "comm.hpp"
#include "hdf5_util.hpp"
#include "merge.hpp"
#include "memory_plan.hpp"
#include "merge_compare.hpp"
#include "merge_inputs.hpp"
#include "moe_edit.hpp"
#include "resources.hpp"
#include "reference_forward.hpp"
#include "test_util.hpp"
#include "verify.hpp"

namespace {

using namespace dume;
using namespace dume::test;
namespace fs = std::filesystem;

constexpr int kExperts = 3;

double relative_error(const MatrixXdRow& a, const MatrixXdRow& ref) {
  return (a - ref).cwiseAbs().maxCoeff() / ref.cwiseAbs().maxCoeff();
}

// The largest difference of `logits` ([T, 64] of the tiny experts' vocabulary) from the float64
// reference's, relative to the reference's largest magnitude.
double max_relative(const std::vector<float>& logits, const ReferenceRun& reference) {
  double diff = 0, scale = 0;
  for (std::size_t t = 0; t < reference.logits.size(); ++t)
    for (std::size_t v = 0; v < 64; ++v) {
      diff = std::max(diff, std::abs(logits[t * 64 + v] - reference.logits[t][v]));
      scale = std::max(scale, std::abs(reference.logits[t][v]));
    }
  return diff / scale;
}

class Merge : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = make_suite_dir("merge");
    yaml_ = write_merge_inputs(dir_, kExperts, DType::BF16);
    config_ = merge_config_parse(yaml_, dir_ / "merge.yaml");
    run_merge(config_, false);
    stats_ = read_statistics(dir_ / "out" / "stats.h5");
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }

  // Domain e's calibration batches exactly as the merge runs them; calls fn(layer, rows).
  static void for_each_calibration_input(int e, const std::function<void(std::int64_t, const MatrixXdRow&)>& fn) {
    const HfCheckpoint expert(dir_ / ("d" + std::to_string(e)));
    Model model;
    model.config = expert.config();
    model.shared = read_moe_model(dir_ / "out").shared;
    for (std::int64_t l = 0; l + 1 < model.config.num_layers; ++l)
      model.experts.push_back({calibration_mlp(expert, l, DType::BF16)});
    model.experts.emplace_back(1);  // the last layer's MLP: never run when stopping at its input
    auto backend = make_backend(BackendKind::cpu, 1);
    Forward forward(model, *backend);
    const auto& spec = config_.experts[static_cast<std::size_t>(e)].calibration;
    const CorpusWindows windows(corpus_read(spec), 32, 0, spec.path);
    ForwardOptions options;
    options.forced_expert = 0;
    options.context_tokens = 24;
    options.logits = false;
    options.on_mlp_input = [&](std::int64_t l, const float* x, std::int64_t T) {
      fn(l, Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(x, T, 48).cast<double>());
    };
    for (std::size_t first = 0; first < windows.count(); first += 3) {
      const std::size_t B = std::min<std::size_t>(3, windows.count() - first);
      forward.run(windows.tokens().subspan(first * 32, B * 32), static_cast<std::int64_t>(B), 32, options);
    }
  }

  static inline fs::path dir_;
  static inline std::string yaml_;
  static inline MergeConfig config_;
  static inline Statistics stats_;
};

TEST_F(Merge, WritesTheDocumentedFiles) {
  for (const char* name : {"moe.h5", "moe-00001-of-00001.h5", "stats.h5", "merge.yaml"})
    EXPECT_TRUE(fs::exists(dir_ / "out" / name)) << name;
  for (const auto& entry : fs::directory_iterator(dir_))  // no temporary directory left behind
    EXPECT_EQ(entry.path().filename().string().find(".tmp-"), std::string::npos) << entry.path();
  const MoeInfo info = read_moe_info(dir_ / "out");
  EXPECT_EQ(info.experts, (std::vector<std::string>{"d0", "d1", "d2"}));
  EXPECT_EQ(info.dtype, DType::BF16);
  EXPECT_EQ(info.router.context_tokens, 24);
  EXPECT_EQ(info.shared_hash, stats_.shared_hash);
}

// The accumulated statistics equal a long-double sum over the very same MLP inputs.
TEST_F(Merge, StatisticsEqualAFloat64ReferenceFromTheSameMlpInputs) {
  for (int e = 0; e < kExperts; ++e) {
    std::vector<MatrixXdRow> reference(3, MatrixXdRow::Zero(49, 49));
    std::int64_t rows = 0;
    for_each_calibration_input(e, [&](std::int64_t l, const MatrixXdRow& x) {
      for (Eigen::Index t = 0; t < x.rows(); ++t) {
        Eigen::Matrix<long double, Eigen::Dynamic, 1> z(49);
        z.head(48) = x.row(t).transpose().cast<long double>();
        z(48) = 1;
        reference[static_cast<std::size_t>(l)] += (z * z.transpose()).cast<double>();
      }
      if (l == 0) rows += x.rows();
    });
    const DomainStatistics& d = stats_.domains[static_cast<std::size_t>(e)];
    EXPECT_EQ(d.tokens, rows);
    for (std::size_t l = 0; l < 3; ++l) EXPECT_LE(relative_error(d.A[l], reference[l]), 1e-9) << "domain " << e << " layer " << l;
  }
}

// Against MLP inputs from a whole float64 forward: the gap is the f32 forward's rounding.
TEST_F(Merge, StatisticsAgreeWithAWholeFloat64ForwardToF32Rounding) {
  const Model shared_model = read_moe_model(dir_ / "out");
  for (int e = 0; e < kExperts; ++e) {
    Model model = shared_model;  // shared weights as stored; expert e's MLPs as stored
    const auto& spec = config_.experts[static_cast<std::size_t>(e)].calibration;
    const CorpusWindows windows(corpus_read(spec), 32, 0, spec.path);
    std::vector<MatrixXdRow> reference(3, MatrixXdRow::Zero(49, 49));
    for (std::size_t w = 0; w < windows.count(); ++w) {
      const auto window = windows.window(w);
      const std::vector<std::uint32_t> tokens(window.begin(), window.begin() + 24);
      const ReferenceRun run = reference_forward(model, tokens, e);
      for (std::size_t l = 0; l < 3; ++l)
        for (const Vec& h : run.mlp_inputs[l]) {
          Eigen::VectorXd z(49);
          z.head(48) = Eigen::Map<const Eigen::VectorXd>(h.data(), 48);
          z(48) = 1;
          reference[l] += z * z.transpose();
        }
    }
    for (std::size_t l = 0; l < 3; ++l)
      EXPECT_LE(relative_error(stats_.domains[static_cast<std::size_t>(e)].A[l], reference[l]), 1e-5)
          << "domain " << e << " layer " << l;
  }
}

// Routers: ridge_solve (Cholesky) against a QR solve of the same system in f64, and the stored
// f32 routers are that solution rounded.
TEST_F(Merge, RoutersEqualAnIndependentFloat64Solve) {
  const Model moe = read_moe_model(dir_ / "out");
  for (std::int64_t l = 0; l < 3; ++l) {
    const MatrixXdRow A = stats_.total_A(l);
    const Eigen::MatrixXd B = stats_.B(l);
    Eigen::MatrixXd system = A;
    system.diagonal().array() += 0.01;
    const Eigen::MatrixXd W = system.colPivHouseholderQr().solve(B);  // 49 x E
    const RouterSolution solved = ridge_solve(A, B, 0.01, true, l);
    for (Eigen::Index e = 0; e < kExperts; ++e) {
      const double norm = W.col(e).head(48).norm();
      const Eigen::VectorXd weight = W.col(e).head(48) / norm;
      const double bias = W(48, e) / norm;
      EXPECT_LE((solved.weight.row(e).transpose() - weight).cwiseAbs().maxCoeff() / weight.cwiseAbs().maxCoeff(), 1e-9);
      EXPECT_NEAR(solved.bias(e), bias, 1e-9 * std::abs(bias));
      EXPECT_NEAR(solved.weight.row(e).norm(), 1.0, 1e-12);
      for (Eigen::Index i = 0; i < 48; ++i)
        EXPECT_EQ(moe.routers[static_cast<std::size_t>(l)].weight(e, i), static_cast<float>(solved.weight(e, i)));
      EXPECT_EQ(moe.routers[static_cast<std::size_t>(l)].bias(e), static_cast<float>(solved.bias(e)));
    }
  }
}

TEST_F(Merge, SharedWeightsAreTheRoundedAverageAndExpertsAreExactCopies) {
  std::vector<Model> experts;
  for (int e = 0; e < kExperts; ++e) experts.push_back(load_dense_model(HfCheckpoint(dir_ / ("d" + std::to_string(e)))));
  const Model moe = read_moe_model(dir_ / "out");
  std::size_t checked = 0;
  for_each_shared_tensor(moe.config, moe.shared, [&](const std::string&, const std::string& path,
                                                     const std::vector<std::int64_t>&, const auto& stored) {
    std::size_t index = 0;  // the same tensor in each expert: visit in lockstep
    std::vector<const float*> sources;
    for (const Model& m : experts)
      for_each_shared_tensor(m.config, m.shared, [&](const std::string&, const std::string& p,
                                                     const std::vector<std::int64_t>&, const auto& v) {
        if (p == path) sources.push_back(v.data());
      });
    ASSERT_EQ(sources.size(), static_cast<std::size_t>(kExperts));
    for (Eigen::Index i = 0; i < stored.size(); ++i, ++index) {
      double mean = 0;
      for (const float* s : sources) mean += s[i];
      const float expected = bf16_to_f32(f32_to_bf16(static_cast<float>(mean / kExperts)));
      ASSERT_EQ(stored.data()[i], expected) << path << "[" << i << "]";
    }
    ++checked;
  });
  EXPECT_EQ(checked, 3u * 6u + 3u);  // per layer 2 norms + 4 projections; embed, norm, lm_head
  const H5Id file = h5::open_file(dir_ / "out" / "moe.h5");
  for (int e = 0; e < kExperts; ++e) {
    const HfCheckpoint source(dir_ / ("d" + std::to_string(e)));
    for (std::int64_t l = 0; l < 3; ++l)
      for (const char* proj : {"gate_proj", "up_proj", "down_proj"}) {
        const SafetensorsFile* f = nullptr;
        const TensorInfo& t = source.info(hf::layer(l, std::string("mlp.") + proj + ".weight"), &f);
        const auto stored = h5::read_raw(file.get(), moe_path::expert(l, e, proj));
        const auto original = f->data(t);
        ASSERT_TRUE(std::equal(stored.begin(), stored.end(), original.begin(), original.end())) << l << " " << e << " " << proj;
      }
  }
}

// The stored MoE, read back through moe.h5's links, routes like an independent float64 forward.
TEST_F(Merge, MoeForwardMatchesAnIndependentFloat64Forward) {
  Model moe = read_moe_model(dir_ / "out");
  const std::string corpus = tiny_corpus(1, 64);
  const std::vector<std::uint32_t> tokens(corpus.begin(), corpus.begin() + 20);
  for (int k : {1, 2}) {
    moe.top_k = k;
    auto backend = make_backend(BackendKind::cpu, 1);
    Forward forward(moe, *backend);
    EXPECT_LE(max_relative(forward.run(tokens, 1, 20), reference_forward(moe, tokens, -1)), 1e-5) << "top_k " << k;
  }
}

// Expert attention (router.expert_attention): every layer's attention is the routed experts' own,
// weighted by one decision per token taken at layer 0 with the shared attention; against the
// independent float64 forward, causal, and a forced expert runs its own attention.
TEST_F(Merge, ExpertAttentionMatchesAnIndependentFloat64Forward) {
  Model moe = read_moe_model(dir_ / "out");
  moe.routing = Routing::parse("mean+layer:0");
  std::srand(3);
  for (const LayerWeights& layer : moe.shared.layers) {
    auto& experts = moe.expert_attention.emplace_back();
    for (int e = 0; e < kExperts; ++e) {  // the shared attention, perturbed differently per expert
      AttentionWeights a = layer.attention;
      for (Matrix* m : {&a.q, &a.k, &a.v, &a.o}) *m += 0.05f * Matrix::Random(m->rows(), m->cols());
      experts.push_back(a);
    }
  }
  const std::string corpus = tiny_corpus(1, 64);
  std::vector<std::uint32_t> tokens(corpus.begin(), corpus.begin() + 20);
  auto backend = make_backend(BackendKind::cpu, 1);
  for (int k : {1, 2}) {
    moe.top_k = k;
    Forward forward(moe, *backend);
    const std::vector<float> logits = forward.run(tokens, 1, 20);
    EXPECT_LE(max_relative(logits, reference_forward(moe, tokens, -1)), 1e-5) << "top_k " << k;
    std::vector<std::uint32_t> changed = tokens;  // later tokens change neither earlier routes nor logits
    for (std::size_t t = 12; t < 20; ++t) changed[t] = (changed[t] + 7) % 64;
    const std::vector<float> again = forward.run(changed, 1, 20);
    EXPECT_TRUE(std::equal(logits.begin(), logits.begin() + 12 * 64, again.begin())) << "top_k " << k;
  }
  Forward forward(moe, *backend);
  ForwardOptions forced;
  forced.forced_expert = 1;
  EXPECT_LE(max_relative(forward.run(tokens, 1, 20, forced), reference_forward(moe, tokens, 1)), 1e-5);
}

// Qwen3 experts (q_norm and k_norm on each head, head_dim apart from the hidden size), merged
// with expert attention: the MoE keeps every expert's norms, runs like the independent float64
// forward, verifies, and a domain folded in gives the merge of all three on the same shared weights.
TEST(MergeQwen3, PerHeadNormsMergeRunAndFoldIn) {
  const fs::path dir = make_suite_dir("merge-qwen3");
  std::string yaml = write_merge_inputs(dir, kExperts, DType::BF16, "OUT", 4096, 3, Architecture::qwen3);
  yaml.replace(yaml.find("router: {"), 9, "router: {expert_attention: true, routing: mean+layer:0, ");
  const auto line_of = [&](const std::string& name) {
    const std::size_t at = yaml.find("  - {name: " + name);
    return yaml.substr(at, yaml.find('\n', at) - at + 1);
  };
  const std::string d2 = line_of("d2");
  const auto merge = [&](std::string text, const std::string& output) {
    text.replace(text.find("OUT"), 3, output);
    run_merge(merge_config_parse(text, dir / "merge.yaml"), false);
  };
  merge(yaml, "all");
  const Model moe = read_moe_model(dir / "all");
  ASSERT_TRUE(moe.config.qk_norm);
  ASSERT_EQ(moe.expert_attention.size(), 3u);
  EXPECT_EQ(moe.expert_attention[1][2].q_norm.size(), 16);
  EXPECT_FALSE(moe.expert_attention[1][2].k_norm.isApprox(moe.shared.layers[1].attention.k_norm));  // the expert's own
  const std::string corpus = tiny_corpus(1, 64);
  const std::vector<std::uint32_t> tokens(corpus.begin(), corpus.begin() + 20);
  auto backend = make_backend(BackendKind::cpu, 1);
  Forward forward(moe, *backend);
  EXPECT_LE(max_relative(forward.run(tokens, 1, 20), reference_forward(moe, tokens, -1)), 1e-5);
  const VerifyReport report = verify_moe(dir / "all");
  EXPECT_TRUE(report.ok()) << report.problems.front();

  std::string two = yaml;
  two.erase(two.find(d2), d2.size());
  merge(two, "two");
  std::string fold = yaml.substr(yaml.find("router:"));
  fold.erase(0, fold.find('\n') + 1);  // the router is the MoE's
  fold.replace(fold.find("OUT"), 3, "folded");
  run_fold_in(merge_config_parse("moe: two\nexperts:\n" + d2 + fold, dir / "fold.yaml"), false, false);
  merge(yaml.substr(0, yaml.find("output:")) + "shared: {moe: two}\noutput: OUT\ncompute: {threads: 1}\n", "same-shared");
  expect_same_merge(dir / "folded", dir / "same-shared");
  fs::remove_all(dir);
}

TEST(RidgeSolve, SingularSystemNamesTheLayer) {
  EXPECT_ERROR_WITH(ridge_solve(MatrixXdRow::Zero(5, 5), Eigen::MatrixXd::Ones(5, 2), 0.0, true, 7), "layer 7",
                    "not positive definite", "larger router.lambda");
}

// Each check before any work: one clear message, nothing written.
class MergeChecks : public TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    yaml_ = write_merge_inputs(dir_, 2, DType::F32, "out", 1024);
  }
  void expect_refused(const std::string& yaml, std::initializer_list<std::string> parts, bool force = false) {
    expect_error_with([&] { run_merge(merge_config_parse(yaml, dir_ / "merge.yaml"), force); }, parts);
    if (!fs::exists(dir_ / "out" / "keep")) {
      EXPECT_FALSE(fs::exists(dir_ / "out"));
    }
  }
  static std::string replace(std::string s, const std::string& from, const std::string& to) {
    const auto at = s.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    return s.replace(at, from.size(), to);
  }
  std::string yaml_;
};

TEST_F(MergeChecks, ArchitecturesMustMatch) {
  ModelConfig other = tiny_config();
  other.intermediate_size = 80;
  other.json_text = model_config_to_json(other);
  save_dense_checkpoint(random_model(other, 5), DType::F32, dir_ / "wide");
  expect_refused(replace(yaml_, "checkpoint: d1,", "checkpoint: wide,"),
                 {"expert 'd1'", "does not match expert 'd0'", "intermediate_size 96 vs 80"});
}

TEST_F(MergeChecks, CorpusMustExist) {
  expect_refused(replace(yaml_, "path: d1.bin", "path: nowhere.bin"), {"nowhere.bin", "no such file"});
}

TEST_F(MergeChecks, TokenIdsMustBeBelowTheVocab) {
  std::ofstream(dir_ / "big.bin", std::ios::binary) << std::string(100, '\x05') + "\xc8" + std::string(100, '\x05');
  expect_refused(replace(yaml_, "path: d1.bin", "path: big.bin"), {"big.bin", "position 100", "id 200", "vocab (size 64)"});
}

TEST_F(MergeChecks, TopKAtMostTheNumberOfExperts) {
  expect_refused(replace(yaml_, "router: {lambda: 0.01,", "router: {top_k: 3, lambda: 0.01,"),
                 {"merge.yaml:4:", "router.top_k must be between 1 and the number of experts (2), got 3"});
}

TEST_F(MergeChecks, LambdaNonNegative) {
  expect_refused(replace(yaml_, "lambda: 0.01", "lambda: -1"), {"merge.yaml:4:", "router.lambda must be >= 0"});
}

TEST_F(MergeChecks, UnknownKeysAndWrongTypesNameTheLine) {
  expect_refused(replace(yaml_, "lambda: 0.01", "lamda: 0.01"), {"merge.yaml:4:", "unknown key 'lamda' in router"});
  expect_refused(replace(yaml_, "lambda: 0.01", "lambda: lots"), {"merge.yaml:4:", "router.lambda must be a number or auto, got 'lots'"});
  expect_refused(yaml_ + "extra: 1\n", {"merge.yaml:8:", "unknown key 'extra'"});
}

TEST_F(MergeChecks, OutputIsNeverReplacedWithoutForce) {
  fs::create_directories(dir_ / "out");
  std::ofstream(dir_ / "out" / "keep") << "precious";
  expect_refused(yaml_, {"output", "exists", "--force"});
  EXPECT_TRUE(fs::exists(dir_ / "out" / "keep"));
  // --force replaces only an earlier MoE, not a folder of other files.
  EXPECT_THROW(run_merge(merge_config_parse(yaml_, dir_ / "merge.yaml"), /*force=*/true), Error);
  EXPECT_TRUE(fs::exists(dir_ / "out" / "keep"));
  fs::remove_all(dir_ / "out");
  run_merge(merge_config_parse(yaml_, dir_ / "merge.yaml"), false);
  std::ofstream(dir_ / "out" / "notes") << "about the earlier merge";
  run_merge(merge_config_parse(yaml_, dir_ / "merge.yaml"), /*force=*/true);
  EXPECT_FALSE(fs::exists(dir_ / "out" / "notes"));
  EXPECT_TRUE(fs::exists(dir_ / "out" / "moe.h5"));
}

TEST_F(MergeChecks, ShardsSplitAtTheConfiguredSize) {
  run_merge(merge_config_parse(replace(yaml_, "output: out", "output: {path: out, shard_size: 20KB}"), dir_ / "merge.yaml"),
            false);
  const MoeInfo info = read_moe_info(dir_ / "out");
  ASSERT_GT(info.shard_files.size(), 3u);
  for (const auto& f : info.shard_files) EXPECT_TRUE(fs::exists(dir_ / "out" / f)) << f;
  const Model moe = read_moe_model(dir_ / "out");  // every link resolves
  EXPECT_EQ(moe.experts.size(), 3u);
}

TEST_F(MergeChecks, AMemoryBudgetThatForcesChunksGivesTheSameStatistics) {
  // Held-out inputs too, so that both chunked passes (statistics and held-out) are covered.
  // No periodic checkpoints, so that the unlimited budget runs each domain in one pass.
  const std::string yaml =
      replace(yaml_, "batch_sequences: 3}", "batch_sequences: 3, heldout_fraction: 0.3, checkpoint_minutes: 0}");
  run_merge(merge_config_parse(yaml, dir_ / "merge.yaml"), false);
  const MergeConfig config = merge_config_parse(replace(yaml, "output: out", "output: chunked"), dir_ / "merge.yaml");
  const MemoryPlan plan = plan_memory(HfCheckpoint(config.experts[0].checkpoint).config(), config, 2, DType::F32, 100,
                                      std::int64_t{1} << 40);
  EXPECT_TRUE(plan.one_pass);     // unlimited: each domain in one pass, one layer's statistics at a time
  MergeConfig chunked = config;  // two batches per chunk: the windows run in several chunks
  chunked.memory = plan.minimum + plan.round_bytes;
  const MemoryPlan tight_plan =
      plan_memory(HfCheckpoint(config.experts[0].checkpoint).config(), chunked, 2, DType::F32, 100, chunked.memory);
  EXPECT_EQ(tight_plan.chunk_rounds, 2);
  EXPECT_FALSE(tight_plan.one_pass);
  run_merge(chunked, false);
  const Statistics a = read_statistics(dir_ / "out" / "stats.h5"), b = read_statistics(dir_ / "chunked" / "stats.h5");
  ASSERT_EQ(a.domains.size(), b.domains.size());
  for (std::size_t e = 0; e < a.domains.size(); ++e) {
    EXPECT_EQ(a.domains[e].tokens, b.domains[e].tokens);
    ASSERT_EQ(a.domains[e].heldout.size(), 3u);
    for (std::size_t l = 0; l < 3; ++l) {
      EXPECT_TRUE(a.domains[e].A[l] == b.domains[e].A[l]) << e << " " << l;  // bit for bit
      EXPECT_TRUE(a.domains[e].heldout[l] == b.domains[e].heldout[l]) << e << " " << l;
    }
  }
  // One byte short of the smallest budget is refused before any work, naming the smallest (with
  // periodic checkpoints, whose smallest budget does not depend on the number of batches).
  MergeConfig tight = config;
  tight.output.path = dir_ / "tight";
  tight.calibration.checkpoint_minutes = 10;
  const std::int64_t smallest =
      plan_memory(HfCheckpoint(config.experts[0].checkpoint).config(), tight, 2, DType::F32, 100, 0).minimum;
  tight.memory = smallest - 1;
  expect_error_with([&] { run_merge(tight, false); }, {"compute.memory", "is too small for this merge: it needs at least " +
                                                                             format_bytes(static_cast<double>(smallest))});
  EXPECT_FALSE(fs::exists(dir_ / "tight"));
}

}  // namespace
