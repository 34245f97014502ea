// Models read one layer at a time (layer_stream.hpp): a layer-streamed perplexity over chunks of
// batches equals the resident model's batch by batch, bit for bit, for a dense checkpoint and for
// MoEs with every router kind eval runs (linear, Gaussian, expert attention, routing modes).
#include <gtest/gtest.h>

#include "backend.hpp"
#include "layer_stream.hpp"
#include "merge.hpp"
#include "merge_inputs.hpp"
#include "moe_file.hpp"
#include "perplexity.hpp"
#include "test_util.hpp"

namespace {

using namespace dume;
using namespace dume::test;
namespace fs = std::filesystem;

class LayerStream : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = make_suite_dir("layer_stream");
    const std::string yaml = write_merge_inputs(dir_, 3, DType::BF16, "linear");
    run_merge(merge_config_parse(yaml, dir_ / "linear.yaml"), false);
    std::string gaussian = yaml;
    const std::string router = "router: {lambda: 0.01, context_tokens: 24}\n";
    gaussian.replace(gaussian.find(router), router.size(),
                     "router: {method: gaussian, lambda: 0.01, context_tokens: 24, routing: mean+layer:0, "
                     "expert_attention: true}\n");
    gaussian.replace(gaussian.find("output: linear"), 14, "output: gaussian");
    run_merge(merge_config_parse(gaussian, dir_ / "gaussian.yaml"), false);
    CorpusSpec spec;
    spec.path = dir_ / "d1.test";
    spec.format = CorpusFormat::text_bytes;
    windows_ = std::make_unique<CorpusWindows>(corpus_read(spec), 16, 0, spec.path);
  }
  static void TearDownTestSuite() {
    windows_.reset();
    fs::remove_all(dir_);
  }

  // nll of the windows in batches of 3, resident (one batch at a time) and streamed (chunks of 4).
  static std::pair<double, double> both(Model resident, const LayerFill& fill, Model empty, const ForwardOptions& o) {
    auto backend = make_backend(BackendKind::cpu, 1);
    PerplexityRun run;
    run.batch = 3;
    run.options = [o](std::int64_t) { return o; };
    Forward whole(resident, *backend);
    const double a = perplexity(whole, resident.config, *windows_, run).nll;
    run.chunk_batches = 4;
    Forward streamed(empty, *backend);
    const double b = perplexity(streamed, empty.config, *windows_, run, stream_layers(empty, streamed, fill)).nll;
    return {a, b};
  }

  static inline fs::path dir_;
  static inline std::unique_ptr<CorpusWindows> windows_;
};

TEST_F(LayerStream, ADenseCheckpointGivesTheResidentNllBitForBit) {
  const HfCheckpoint checkpoint(dir_ / "d0");
  const auto [resident, streamed] =
      both(load_dense_model(checkpoint), checkpoint_layers(checkpoint), empty_model(checkpoint.config(), 1), {});
  EXPECT_GT(resident, 0);
  EXPECT_EQ(resident, streamed);
}

TEST_F(LayerStream, EveryMoeRoutingGivesTheResidentNllBitForBit) {
  for (const char* name : {"linear", "gaussian"})
    for (const int k : {1, 2})
      for (const int forced : {-1, 2}) {
        const MoeInfo info = read_moe_info(dir_ / name);
        Model resident = read_moe_model(dir_ / name), empty = empty_moe_model(info);
        resident.top_k = empty.top_k = k;
        ForwardOptions o;
        o.forced_expert = forced;
        const auto [a, b] = both(resident, moe_layers(dir_ / name, info), empty, o);
        EXPECT_EQ(a, b) << name << " k " << k << " forced " << forced;
      }
}

TEST_F(LayerStream, HoldsOneLayerOrTheHeadAtATime) {
  const MoeInfo info = read_moe_info(dir_ / "gaussian");
  Model model = empty_moe_model(info);
  auto backend = make_backend(BackendKind::cpu, 1);
  Forward forward(model, *backend);
  const LayerSource source = stream_layers(model, forward, moe_layers(dir_ / "gaussian", info));
  const auto resident = [&] {
    std::vector<int> layers;
    for (std::size_t l = 0; l < model.shared.layers.size(); ++l)
      if (model.shared.layers[l].attention.q.size() || !model.experts[l].empty() || model.routers[l].weight.size() ||
          !model.expert_attention[l].empty())
        layers.push_back(static_cast<int>(l));
    return layers;
  };
  source.layer(1);
  EXPECT_EQ(resident(), std::vector<int>{1});
  EXPECT_EQ(model.experts[1].size(), 3u);
  EXPECT_EQ(model.routers[1].quadratic.rows(), 3 * info.config.hidden_size);
  source.layer(2);
  EXPECT_EQ(resident(), std::vector<int>{2});
  source.head();
  EXPECT_TRUE(resident().empty());
  EXPECT_EQ(model.shared.output_embedding().rows(), info.config.vocab_size);
  source.layer(-1);
  EXPECT_EQ(model.shared.norm.size(), 0);
  EXPECT_EQ(model.shared.lm_head.size(), 0);
  const auto last = static_cast<std::uint32_t>(info.config.vocab_size - 1);
  const std::vector<std::uint32_t> ids{3, 7, last};
  const Matrix rows = source.embedding(ids);
  const Model whole = read_moe_model(dir_ / "gaussian");
  for (std::size_t i = 0; i < ids.size(); ++i) EXPECT_EQ(rows.row(static_cast<Eigen::Index>(i)), whole.shared.embed.row(ids[i]));
}

}  // namespace
