// `dume export` to the Hugging Face Mixtral layout: the exported checkpoint computes what
// transformers' MixtralForCausalLM computes on it (tests/fixtures/export, made by
// tools/check_mixtral_export.py) and what dume's own MoE forward pass computes, in both layouts,
// sharded or not; what Mixtral cannot express is refused.
#include <gtest/gtest.h>
#include <hdf5.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>

#include "moe_edit.hpp"
#include "forward.hpp"
#include "hdf5_util.hpp"
#include "merge.hpp"
#include "mixtral.hpp"
#include "moe_file.hpp"
#include "reference.hpp"
#include "test_util.hpp"

namespace {

using namespace dume;
using namespace dume::test;
namespace fs = std::filesystem;

const fs::path kFixture = fs::path(DUME_FIXTURES_DIR) / "export";

std::vector<float> logits_of(const Model& model, const Reference& ref) {
  auto backend = make_backend(BackendKind::cpu, 1);
  Forward forward(model, *backend);
  return forward.run(ref.tokens, ref.B, ref.S, {});
}

// The fixture's MoE, merged once for the suite, and its exports.
class Export : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = make_suite_dir("export");
    MergeConfig config = merge_config_read(kFixture / "merge.yaml");
    config.output.path = dir_ / "moe";
    run_merge(config, false);
    export_mixtral(dir_ / "moe", dir_ / "fused", {}, false);
    ExportOptions per_expert;
    per_expert.layout = MixtralLayout::per_expert;
    export_mixtral(dir_ / "moe", dir_ / "per-expert", per_expert, false);
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }

  // Runs the dume command; returns its exit status and leaves its output in `out`.
  static int dume(const std::string& args, std::string& out) {
    const fs::path log = dir_ / "command.log";
    const int status = std::system((std::string(DUME_EXECUTABLE) + " " + args + " >" + log.string() + " 2>&1").c_str());
    std::ifstream in(log);
    out.assign(std::istreambuf_iterator<char>(in), {});
    return status;
  }

  static inline fs::path dir_;
};

TEST_F(Export, LogitsMatchTransformersAndTheMoeInBothLayouts) {
  const Reference ref(kFixture / "reference.safetensors");
  const auto& transformers = ref.tensors.at("logits");
  const std::vector<float> moe = logits_of(read_moe_model(dir_ / "moe"), ref);
  EXPECT_LT(relative_error(moe, transformers), 1e-5);
  for (const char* layout : {"fused", "per-expert"}) {
    const std::vector<float> exported = logits_of(load_mixtral_model(HfCheckpoint(dir_ / layout)), ref);
    const double vs_transformers = relative_error(exported, transformers), vs_moe = relative_error(exported, moe);
    EXPECT_LT(vs_transformers, 1e-5) << layout;
    EXPECT_LT(vs_moe, 1e-6) << layout;  // only W / T is rounded differently
    char text[32];
    std::snprintf(text, sizeof text, "%.2e", vs_transformers);
    RecordProperty(std::string(layout) + "_vs_transformers", text);
  }
}

TEST_F(Export, WeightsAreTheMoesBitsAndTheTemperatureIsFolded) {
  const Model moe = read_moe_model(dir_ / "moe");
  const Model exported = load_mixtral_model(HfCheckpoint(dir_ / "fused"));
  EXPECT_EQ(exported.top_k, 2);
  EXPECT_EQ(exported.temperature, 1.0f);
  EXPECT_TRUE(exported.shared.embed == moe.shared.embed);
  EXPECT_TRUE(exported.shared.lm_head == moe.shared.lm_head);
  for (std::size_t l = 0; l < moe.experts.size(); ++l) {
    EXPECT_TRUE(exported.shared.layers[l].attention.q == moe.shared.layers[l].attention.q);
    for (std::size_t e = 0; e < moe.experts[l].size(); ++e) {
      EXPECT_TRUE(exported.experts[l][e].gate == moe.experts[l][e].gate);
      EXPECT_TRUE(exported.experts[l][e].up == moe.experts[l][e].up);
      EXPECT_TRUE(exported.experts[l][e].down == moe.experts[l][e].down);
    }
    const Matrix folded = moe.routers[l].weight / moe.temperature;
    EXPECT_TRUE(exported.routers[l].weight == folded);
    EXPECT_TRUE(moe.routers[l].bias.isZero(0));
  }
}

TEST_F(Export, ConfigIsMixtralWithTheSourcesSettings) {
  const HfCheckpoint exported(dir_ / "fused");
  const ModelConfig& c = exported.config();
  const ModelConfig source = read_moe_info(dir_ / "moe").config;
  EXPECT_EQ(c.architecture, Architecture::mixtral);
  EXPECT_EQ(c.num_experts, 4);
  EXPECT_EQ(c.experts_per_token, 2);
  EXPECT_EQ(exported.dtype(), DType::BF16);
  ModelConfig dense = c;
  dense.architecture = source.architecture;
  dense.num_experts = 0;
  std::string difference;
  EXPECT_TRUE(same_architecture(dense, source, &difference)) << difference;
  const auto j = nlohmann::json::parse(std::ifstream(dir_ / "fused" / "config.json"));
  EXPECT_EQ(j.at("model_type"), "mixtral");
  EXPECT_EQ(j.at("num_local_experts"), 4);
  EXPECT_FALSE(j.contains("attention_bias"));
}

TEST_F(Export, ShardsWithAnIndexAndOtherDtypesLoadTheSameModel) {
  ExportOptions options;
  options.shard_bytes = 1'000'000;
  options.dtype = DType::F32;
  export_mixtral(dir_ / "moe", dir_ / "sharded", options, false);
  EXPECT_TRUE(fs::exists(dir_ / "sharded" / "model.safetensors.index.json"));
  const HfCheckpoint sharded(dir_ / "sharded");
  ASSERT_EQ(sharded.files().size(), 9u);  // 9.8 MB in f32, in the order of the model
  EXPECT_EQ(sharded.files()[0].path().filename(), "model-00001-of-00009.safetensors");
  EXPECT_EQ(sharded.dtype(), DType::F32);
  const Model a = load_mixtral_model(sharded), b = load_mixtral_model(HfCheckpoint(dir_ / "fused"));
  for (std::size_t l = 0; l < a.experts.size(); ++l)
    for (std::size_t e = 0; e < a.experts[l].size(); ++e) EXPECT_TRUE(a.experts[l][e].down == b.experts[l][e].down);
}

TEST_F(Export, CopiesTokenizerFiles) {
  fs::create_directories(dir_ / "tokenizer");
  std::ofstream(dir_ / "tokenizer" / "tokenizer.json") << "{}";
  std::ofstream(dir_ / "tokenizer" / "unrelated.txt") << "x";
  ExportOptions options;
  options.tokenizer = dir_ / "tokenizer";
  export_mixtral(dir_ / "moe", dir_ / "with-tokenizer", options, false);
  EXPECT_TRUE(fs::exists(dir_ / "with-tokenizer" / "tokenizer.json"));
  EXPECT_FALSE(fs::exists(dir_ / "with-tokenizer" / "unrelated.txt"));
}

TEST_F(Export, RefusesWhatMixtralCannotExpress) {
  // A router bias: resolve the same statistics with one, then the way back.
  ResolveOverrides with_bias;
  with_bias.bias = true;
  run_resolve(dir_ / "moe", with_bias, dir_ / "biased", false);
  expect_error_with([&] { export_mixtral(dir_ / "biased", dir_ / "x", {}, false); },
                    {"router has a bias", "router.bias: false", "dume resolve"});
  ResolveOverrides without_bias;
  without_bias.bias = false;
  run_resolve(dir_ / "biased", without_bias, dir_ / "unbiased", false);
  export_mixtral(dir_ / "unbiased", dir_ / "x", {}, false);

  // Routing that looks beyond the token.
  ResolveOverrides mean;
  mean.routing = Routing::parse("mean");
  run_resolve(dir_ / "moe", mean, dir_ / "mean", false);
  expect_error_with([&] { export_mixtral(dir_ / "mean", dir_ / "w", {}, false); },
                    {"routing 'mean'", "--routing token"});

  // A Gaussian router: quadratic in the hidden state.
  ResolveOverrides gaussian;
  gaussian.method = RouterMethod::gaussian;
  run_resolve(dir_ / "moe", gaussian, dir_ / "gaussian", false);
  expect_error_with([&] { export_mixtral(dir_ / "gaussian", dir_ / "v", {}, false); },
                    {"Gaussian routers are quadratic", "--method dume"});

  // An existing output.
  expect_error_with([&] { export_mixtral(dir_ / "moe", dir_ / "fused", {}, false); }, {"exists", "--force"});

  // Attention biases (a Qwen2 source): the MoE's config rewritten in place.
  fs::copy(dir_ / "moe", dir_ / "qwen2", fs::copy_options::recursive);
  {
    H5Id file(H5Fopen((dir_ / "qwen2" / "moe.h5").c_str(), H5F_ACC_RDWR, H5P_DEFAULT));
    ASSERT_TRUE(file.valid());
    auto config = nlohmann::json::parse(h5::read_string_attribute(file.get(), "config"));
    config["architectures"] = {"Qwen2ForCausalLM"};
    config["model_type"] = "qwen2";
    ASSERT_GE(H5Adelete(file.get(), "config"), 0);
    h5::write_attribute(file.get(), "config", config.dump());
  }
  expect_error_with([&] { export_mixtral(dir_ / "qwen2", dir_ / "y", {}, false); },
                    {"Qwen2ForCausalLM", "attention biases", "Qwen2-MoE is not implemented"});
  EXPECT_FALSE(fs::exists(dir_ / "y"));

  // The reverse direction: a Mixtral is neither a dense model nor an expert to merge.
  expect_error_with([&] { load_mixtral_model(HfCheckpoint(kModels / "llama_gqa_f32")); }, {"is a dense"});
  MergeConfig config = merge_config_read(kFixture / "merge.yaml");
  config.experts[0].checkpoint = dir_ / "fused";
  config.output.path = dir_ / "z";
  expect_error_with([&] { run_merge(config, false); }, {"MixtralForCausalLM mixture of experts", "dense experts"});
}

TEST_F(Export, InspectAndPplReadTheExport) {
  std::string out;
  EXPECT_EQ(dume("inspect " + (dir_ / "fused").string(), out), 0) << out;
  EXPECT_THAT(out, HasSubstr("MixtralForCausalLM"));
  EXPECT_THAT(out, HasSubstr("4 per layer, top-2 (fused layout)"));
  const fs::path corpus = fs::path(DUME_SOURCE_DIR) / "experts" / "data" / "c.test.bin";
  EXPECT_EQ(dume("ppl --checkpoint " + (dir_ / "per-expert").string() + " --corpus " + corpus.string() +
                     " --format text-bytes --max-sequences 2 --threads 1",
                 out),
            0)
      << out;
  EXPECT_THAT(out, HasSubstr("perplexity"));
}

}  // namespace
