// The forward pass against Hugging Face transformers: logits and every layer's MLP input on the
// committed fixtures (tools/make_reference_fixtures.py), plus the DUME hooks (truncation,
// early stop, forced experts).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "hf_checkpoint.hpp"
#include "forward.hpp"
#include "perplexity.hpp"
#include "reference.hpp"
#include "test_util.hpp"

namespace {

using namespace dume;
using namespace dume::test;
namespace fs = std::filesystem;

struct ForwardRun {
  std::vector<float> logits;
  std::vector<std::vector<float>> mlp_inputs;  // [L][T * D]
};

ForwardRun run_forward(const Model& model, const std::vector<std::uint32_t>& tokens, std::int64_t B, std::int64_t S,
                       ForwardOptions options = {}) {
  auto backend = make_backend(BackendKind::cpu, 1);
  Forward forward(model, *backend);
  ForwardRun run;
  const auto D = model.config.hidden_size;
  options.on_mlp_input = [&](std::int64_t, const float* x, std::int64_t T) {
    auto& v = run.mlp_inputs.emplace_back(static_cast<std::size_t>(T * D));
    backend->download(x, v);
  };
  run.logits = forward.run(tokens, B, S, options);
  return run;
}

class MatchesTransformers : public ::testing::TestWithParam<const char*> {};

// f32 compute from f32, bf16 or f16 weights against transformers in f32 on the same weights.
TEST_P(MatchesTransformers, LogitsAndMlpInputs) {
  const fs::path dir = kModels / GetParam();
  const Reference ref(dir / "reference.safetensors");
  const HfCheckpoint checkpoint(dir);
  const Model model = load_dense_model(checkpoint);
  const ForwardRun run = run_forward(model, ref.tokens, ref.B, ref.S);

  const double bound = 1e-5;  // reached: about 1e-6 on every fixture (the issue asks 1e-4)
  const double error = relative_error(run.logits, ref.tensors.at("logits"));
  EXPECT_LE(error, bound);
  RecordProperty("relative_error_logits", std::to_string(error * 1e6) + "e-6");
  ASSERT_EQ(run.mlp_inputs.size(), static_cast<std::size_t>(model.config.num_layers));
  for (std::size_t l = 0; l < run.mlp_inputs.size(); ++l)
    EXPECT_LE(relative_error(run.mlp_inputs[l], ref.tensors.at("mlp_input." + std::to_string(l))), bound)
        << "layer " << l;
  // For 16-bit checkpoints transformers' native-precision logits differ from both by far more:
  // that gap is transformers' own 16-bit rounding, documented here, not a bound on dume.
  if (ref.tensors.contains("logits_native")) {
    const double native = relative_error(run.logits, ref.tensors.at("logits_native"));
    EXPECT_LE(native, 0.05);
    RecordProperty("relative_error_vs_native_16bit", std::to_string(native));
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, MatchesTransformers,
                         ::testing::Values("llama_gqa_f32", "llama3_rope_bf16", "llama_headdim_bias_f16",
                                           "qwen2_bias_f32", "mistral_sharded_f32", "qwen3_qknorm_f32"));

TEST(Forward, PerplexityMatchesTransformersLogits) {
  const fs::path dir = kModels / "llama_gqa_f32";
  const Reference ref(dir / "reference.safetensors");
  const double nll = ref.nll();
  const HfCheckpoint checkpoint(dir);
  const Model model = load_dense_model(checkpoint);
  auto backend = make_backend(BackendKind::cpu, 1);
  Forward forward(model, *backend);
  const CorpusWindows windows(ref.tokens, static_cast<std::size_t>(ref.S), 0, "reference");
  PerplexityRun run;
  run.batch = 1;
  const Perplexity p = perplexity(forward, model.config, windows, run);
  EXPECT_EQ(p.tokens, ref.B * (ref.S - 1));
  EXPECT_NEAR(p.nll, nll, 1e-4 * nll);
}

TEST(Forward, TruncationGivesTheFirstPositionsExactly) {
  const HfCheckpoint checkpoint(kModels / "qwen2_bias_f32");
  const Model model = load_dense_model(checkpoint);
  const Reference ref(kModels / "qwen2_bias_f32" / "reference.safetensors");
  const ForwardRun full = run_forward(model, ref.tokens, ref.B, ref.S);
  ForwardOptions options;
  options.context_tokens = 10;
  options.logits = false;
  const ForwardRun cut = run_forward(model, ref.tokens, ref.B, ref.S, options);
  EXPECT_TRUE(cut.logits.empty());
  ASSERT_EQ(cut.mlp_inputs.size(), full.mlp_inputs.size());
  const auto D = model.config.hidden_size;
  for (std::size_t l = 0; l < cut.mlp_inputs.size(); ++l) {
    ASSERT_EQ(cut.mlp_inputs[l].size(), static_cast<std::size_t>(ref.B * 10 * D));
    for (std::int64_t b = 0; b < ref.B; ++b)
      for (std::int64_t i = 0; i < 10 * D; ++i)  // same kernels, same rows: identical up to GEMM blocking
        EXPECT_NEAR(cut.mlp_inputs[l][static_cast<std::size_t>(b * 10 * D + i)],
                    full.mlp_inputs[l][static_cast<std::size_t>(b * ref.S * D + i)], 1e-5);
  }
}

TEST(Forward, ForcedExpertChoosesTheMlp) {
  const HfCheckpoint checkpoint(kModels / "llama_gqa_f32");
  Model model = load_dense_model(checkpoint);
  const Reference ref(kModels / "llama_gqa_f32" / "reference.safetensors");
  const ForwardRun dense = run_forward(model, ref.tokens, ref.B, ref.S);
  // A second "expert" with a zeroed down projection: forcing it changes the logits; forcing
  // expert 0 reproduces the dense model.
  for (auto& layer : model.experts) {
    MlpWeights zero = layer[0];
    zero.down.setZero();
    layer.push_back(zero);
  }
  ForwardOptions first, second;
  first.forced_expert = 0;
  second.forced_expert = 1;
  EXPECT_EQ(run_forward(model, ref.tokens, ref.B, ref.S, first).logits, dense.logits);
  EXPECT_GT(relative_error(run_forward(model, ref.tokens, ref.B, ref.S, second).logits, dense.logits), 1e-2);
  ForwardOptions third;
  third.forced_expert = 2;
  EXPECT_ERROR_WITH(run_forward(model, ref.tokens, ref.B, ref.S, third), "forced expert 2");
}

TEST(Forward, BatchedEqualsOneSequenceAtATime) {
  const HfCheckpoint checkpoint(kModels / "llama_headdim_bias_f16");
  const Model model = load_dense_model(checkpoint);
  const Reference ref(kModels / "llama_headdim_bias_f16" / "reference.safetensors");
  const ForwardRun both = run_forward(model, ref.tokens, ref.B, ref.S);
  const std::vector<std::uint32_t> second(ref.tokens.begin() + ref.S, ref.tokens.end());
  const ForwardRun one = run_forward(model, second, 1, ref.S);
  const std::span<const float> tail(both.logits.data() + ref.S * 96, static_cast<std::size_t>(ref.S * 96));
  EXPECT_LE(relative_error(one.logits, tail), 1e-5);  // GEMM blocking differs with the row count
}

}  // namespace
