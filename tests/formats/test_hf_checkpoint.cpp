// Tests for pipeline/model_config and pipeline/checkpoint: the fixtures' configs parse as
// transformers meant them; broken or unsupported checkpoints are refused naming key or tensor.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "hf_checkpoint.hpp"
#include "model.hpp"
#include "reference.hpp"
#include "test_util.hpp"

namespace {

using namespace dume;
using dume::test::kModels;
using dume::test::TempDirTest;
namespace fs = std::filesystem;
using nlohmann::json;

TEST(ModelConfig, FixturesParse) {
  const ModelConfig gqa = model_config_read(kModels / "llama_gqa_f32");
  EXPECT_EQ(gqa.architecture, Architecture::llama);
  EXPECT_EQ(gqa.num_kv_heads, 2);
  EXPECT_EQ(gqa.head_dim, 16);
  EXPECT_FALSE(gqa.tie_word_embeddings);
  EXPECT_EQ(gqa.dtype, DType::F32);

  const ModelConfig llama3 = model_config_read(kModels / "llama3_rope_bf16");  // legacy rope_scaling form
  EXPECT_TRUE(llama3.rope_scaling.llama3);
  EXPECT_EQ(llama3.rope_theta, 500000.0);
  EXPECT_EQ(llama3.rope_scaling.original_max_position_embeddings, 64);
  EXPECT_TRUE(llama3.tie_word_embeddings);

  const ModelConfig headdim = model_config_read(kModels / "llama_headdim_bias_f16");
  EXPECT_EQ(headdim.head_dim, 24);
  EXPECT_TRUE(headdim.qkv_bias && headdim.o_bias);

  const ModelConfig qwen = model_config_read(kModels / "qwen2_bias_f32");
  EXPECT_EQ(qwen.architecture, Architecture::qwen2);
  EXPECT_TRUE(qwen.qkv_bias);
  EXPECT_FALSE(qwen.o_bias);
  EXPECT_FALSE(qwen.qk_norm);

  const ModelConfig qwen3 = model_config_read(kModels / "qwen3_qknorm_f32");
  EXPECT_EQ(qwen3.architecture, Architecture::qwen3);
  EXPECT_TRUE(qwen3.qk_norm);
  EXPECT_FALSE(qwen3.qkv_bias || qwen3.o_bias);
  EXPECT_EQ(qwen3.head_dim, 24);
}

TEST(ModelConfig, Llama3ScalingKeepsHighFrequenciesAndDividesLowOnes) {
  const ModelConfig c = model_config_read(kModels / "llama3_rope_bf16");
  ModelConfig plain = c;
  plain.rope_scaling.llama3 = false;
  const auto scaled = c.rope_inv_freq(), base = plain.rope_inv_freq();
  ASSERT_EQ(scaled.size(), 8u);
  EXPECT_EQ(scaled[0], base[0]);                                // wavelength 6.3 < 64 / 4: kept
  EXPECT_GT(scaled[1], base[1] / 8);                            // medium: interpolated
  EXPECT_LT(scaled[1], base[1]);
  for (std::size_t i = 2; i < 8; ++i) EXPECT_FLOAT_EQ(scaled[i], base[i] / 8);  // long: divided by factor
}

TEST(ModelConfig, ParameterCountMatchesTheStoredTensors) {
  for (const char* variant : {"llama_gqa_f32", "llama3_rope_bf16", "llama_headdim_bias_f16", "qwen2_bias_f32",
                              "mistral_sharded_f32", "qwen3_qknorm_f32"}) {
    const HfCheckpoint c(kModels / variant);
    std::int64_t stored = 0;
    for (const auto& f : c.files())
      for (const auto& t : f.tensors()) stored += static_cast<std::int64_t>(t.numel());
    EXPECT_EQ(c.config().parameter_count(), stored) << variant;
  }
}

// Each test gets a copy of a fixture checkpoint to break.
class BrokenCheckpoint : public TempDirTest {
 protected:
  fs::path copy(const std::string& variant) {
    const fs::path dst = dir_ / variant;
    fs::copy(kModels / variant, dst, fs::copy_options::recursive);
    return dst;
  }
  static void edit_config(const fs::path& dir, const std::function<void(json&)>& edit) {
    json j = json::parse(std::ifstream(dir / "config.json"));
    edit(j);
    std::ofstream(dir / "config.json") << j.dump(2);
  }
};

TEST_F(BrokenCheckpoint, UnsupportedArchitecture) {
  const auto dir = copy("llama_gqa_f32");
  edit_config(dir, [](json& j) { j["architectures"] = {"GPT2LMHeadModel"}; });
  EXPECT_ERROR_WITH(HfCheckpoint{dir}, "config.json", "'architectures' names GPT2LMHeadModel");
}

TEST_F(BrokenCheckpoint, UnsupportedRopeType) {
  const auto dir = copy("llama_gqa_f32");
  edit_config(dir, [](json& j) { j["rope_parameters"] = {{"rope_type", "yarn"}, {"factor", 4.0}}; });
  EXPECT_ERROR_WITH(HfCheckpoint{dir}, "'rope_parameters' has rope type 'yarn'");
}

TEST_F(BrokenCheckpoint, UnsupportedActivationAndMlpBias) {
  const auto dir = copy("llama_gqa_f32");
  edit_config(dir, [](json& j) { j["hidden_act"] = "gelu"; });
  EXPECT_ERROR_WITH(HfCheckpoint{dir}, "'hidden_act' is 'gelu'");
  edit_config(dir, [](json& j) {
    j["hidden_act"] = "silu";
    j["mlp_bias"] = true;
  });
  EXPECT_ERROR_WITH(HfCheckpoint{dir}, "'mlp_bias' is true");
}

TEST_F(BrokenCheckpoint, MissingOrWrongKey) {
  const auto dir = copy("llama_gqa_f32");
  edit_config(dir, [](json& j) { j.erase("hidden_size"); });
  EXPECT_ERROR_WITH(HfCheckpoint{dir}, "config.json", "'hidden_size' is missing");
  edit_config(dir, [](json& j) { j["hidden_size"] = "64"; });
  EXPECT_ERROR_WITH(HfCheckpoint{dir}, "'hidden_size' must be a positive integer");
}

TEST_F(BrokenCheckpoint, TensorRequiredByConfigIsInNoFile) {
  const auto dir = copy("llama_gqa_f32");
  edit_config(dir, [](json& j) { j["num_hidden_layers"] = 3; });
  EXPECT_ERROR_WITH(HfCheckpoint{dir}, "tensor 'model.layers.2.", "required by config.json", "is in no file");
}

TEST_F(BrokenCheckpoint, UntiedConfigNeedsLmHead) {
  const auto dir = copy("qwen2_bias_f32");
  edit_config(dir, [](json& j) { j["tie_word_embeddings"] = false; });
  EXPECT_ERROR_WITH(HfCheckpoint{dir}, "tensor 'lm_head.weight' required by config.json");
}

TEST_F(BrokenCheckpoint, ShapeDisagreesWithConfig) {
  const auto dir = copy("llama_gqa_f32");
  edit_config(dir, [](json& j) { j["intermediate_size"] = 170; });
  const HfCheckpoint c(dir);
  EXPECT_ERROR_WITH(load_dense_model(c), "model.safetensors", "mlp.gate_proj.weight' has shape [160, 64]",
                    "config.json implies [170, 64]");
}

TEST_F(BrokenCheckpoint, NanInWeights) {
  const auto dir = copy("llama_gqa_f32");
  const std::string name = "model.layers.1.self_attn.v_proj.weight";
  // file offset of the tensor's data: 8-byte length, header, then data_offsets
  std::uint64_t header_len = 0;
  std::ifstream(dir / "model.safetensors", std::ios::binary).read(reinterpret_cast<char*>(&header_len), 8);
  const std::size_t offset = 8 + header_len + SafetensorsFile(dir / "model.safetensors").find(name)->begin;
  const float nan = std::nanf("");
  std::fstream io(dir / "model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
  io.seekp(static_cast<std::streamoff>(offset + 4 * 5));
  io.write(reinterpret_cast<const char*>(&nan), 4);
  io.close();
  const HfCheckpoint c(dir);
  EXPECT_ERROR_WITH(load_dense_model(c), "tensor '" + name + "'", "non-finite value (nan) at flat index 5");
}

TEST_F(BrokenCheckpoint, IndexPointsAtTheWrongShard) {
  const auto dir = copy("mistral_sharded_f32");
  json index = json::parse(std::ifstream(dir / "model.safetensors.index.json"));
  index["weight_map"]["model.norm.weight"] = "model-00001-of-00009.safetensors";
  std::ofstream(dir / "model.safetensors.index.json") << index.dump();
  EXPECT_ERROR_WITH(HfCheckpoint{dir}, "model.safetensors.index.json", "lists 'model.norm.weight' in "
                                                                    "model-00001-of-00009.safetensors, which does not hold it");
}

TEST_F(BrokenCheckpoint, IndexEscapesTheDirectory) {
  const auto dir = copy("mistral_sharded_f32");
  json index = json::parse(std::ifstream(dir / "model.safetensors.index.json"));
  index["weight_map"]["model.norm.weight"] = "../elsewhere.safetensors";
  std::ofstream(dir / "model.safetensors.index.json") << index.dump();
  EXPECT_ERROR_WITH(HfCheckpoint{dir}, "not a file in the checkpoint directory");
}

TEST_F(BrokenCheckpoint, MissingShardAndNoWeights) {
  const auto dir = copy("mistral_sharded_f32");
  fs::remove(dir / "model-00003-of-00009.safetensors");
  EXPECT_ERROR_WITH(HfCheckpoint{dir}, "model-00003-of-00009.safetensors", "cannot open");
  const auto single = copy("llama_gqa_f32");
  fs::remove(single / "model.safetensors");
  EXPECT_ERROR_WITH(HfCheckpoint{single}, "no model.safetensors or model.safetensors.index.json");
}

TEST_F(BrokenCheckpoint, TruncatedWeights) {
  const auto dir = copy("llama_gqa_f32");
  fs::resize_file(dir / "model.safetensors", fs::file_size(dir / "model.safetensors") - 100);
  EXPECT_ERROR_WITH(HfCheckpoint{dir}, "model.safetensors", "outside the data area");
}

}  // namespace
