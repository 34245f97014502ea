// A Hugging Face config.json for the architectures dume supports (Llama 2/3/3.1/3.2, Mistral,
// Qwen2). Options dume does not implement are refused by name, never guessed.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "dtype.hpp"

namespace dume {

enum class Architecture { llama, mistral, qwen2, qwen3, mixtral };

struct RopeScaling {
  bool llama3 = false;  // rope_type "llama3"; otherwise plain rotary embeddings
  double factor = 1.0, low_freq_factor = 1.0, high_freq_factor = 4.0;
  std::int64_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  Architecture architecture = Architecture::llama;
  std::string architecture_name;  // as in "architectures", e.g. "LlamaForCausalLM"
  std::int64_t vocab_size = 0;                // V
  std::int64_t hidden_size = 0;               // D
  std::int64_t intermediate_size = 0;         // F
  std::int64_t num_layers = 0;                // L
  std::int64_t num_heads = 0;                 // H
  std::int64_t num_kv_heads = 0;              // Hkv
  std::int64_t head_dim = 0;                  // given, or D / H
  std::int64_t num_experts = 0;               // E of a Mixtral MoE (num_local_experts); 0: dense
  std::int64_t experts_per_token = 0;         // its top-k (num_experts_per_tok)
  std::int64_t max_position_embeddings = 0;
  std::optional<std::int64_t> sliding_window;  // Mistral; sequences longer than it are refused
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;  // q/k/v projections have biases (Qwen2; Llama with attention_bias)
  bool o_bias = false;    // o_proj has a bias (Llama with attention_bias)
  bool qk_norm = false;   // each head's q and k RMS-normalized before rotary (Qwen3's q_norm, k_norm)
  std::optional<DType> dtype;  // "torch_dtype" / "dtype" when given
  std::string json_text;       // the config.json text, kept verbatim for outputs

  std::int64_t q_dim() const { return num_heads * head_dim; }
  std::int64_t kv_dim() const { return num_kv_heads * head_dim; }
  // Parameters of the model (embedding and lm_head counted once when tied).
  std::int64_t parameter_count() const;
  // Rotary inverse frequencies (head_dim / 2 values), rounded to f32 as transformers computes them.
  std::vector<float> rope_inv_freq() const;
};

// Parses config.json text; `source` names it in errors ("<source>: '<key>' ...").
ModelConfig model_config_parse(const std::string& json_text, const std::string& source);
ModelConfig model_config_read(const std::filesystem::path& checkpoint_dir);

// True when two configs describe the same network shapes (all that the merge needs to match).
bool same_architecture(const ModelConfig& a, const ModelConfig& b, std::string* difference = nullptr);

std::string to_string(Architecture architecture);

// A config.json for `c` in the form transformers writes (architectures, sizes, rope_parameters).
std::string model_config_to_json(const ModelConfig& c);

}  // namespace dume
