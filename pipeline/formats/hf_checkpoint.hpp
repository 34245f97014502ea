// A Hugging Face model directory: config.json plus model.safetensors, or shards listed by
// model.safetensors.index.json. Tensors are read by name, checked, and widened to f32.
#pragma once

#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "model_config.hpp"
#include "safetensors.hpp"

namespace dume {

// A Hugging Face model directory (config.json and safetensors, one file or sharded with an index),
// memory-mapped and checked. (A "checkpoint" of an interrupted job is resume.hpp's.)
class HfCheckpoint {
 public:
  explicit HfCheckpoint(const std::filesystem::path& dir);  // throws Error naming the file and problem

  const std::filesystem::path& dir() const { return dir_; }
  const ModelConfig& config() const { return config_; }
  const std::vector<SafetensorsFile>& files() const { return files_; }

  bool has(std::string_view name) const;
  // The tensor's header entry and the file holding it; throws when no file holds it.
  const TensorInfo& info(std::string_view name, const SafetensorsFile** file = nullptr) const;
  // Reads `name` into `out` (f32), checking its shape is `shape` and every value is finite.
  void read(std::string_view name, std::span<const std::int64_t> shape, std::span<float> out) const;
  // The same for elements [begin, begin + out.size()) of the flattened tensor.
  void read_slice(std::string_view name, std::span<const std::int64_t> shape, std::size_t begin,
                  std::span<float> out) const;
  // Lets the tensor's mapped pages go once it has been read (memory is then that of the tensors
  // in use, not of every tensor touched so far).
  void release(std::string_view name) const;
  // The same for elements [begin, begin + count) of the flattened tensor.
  void release(std::string_view name, std::size_t begin, std::size_t count) const;
  // The dtype the weights are stored in (the embedding's; config.json's dtype can be stale).
  DType dtype() const;

 private:
  std::filesystem::path dir_;
  ModelConfig config_;
  std::vector<SafetensorsFile> files_;
  std::unordered_map<std::string, std::size_t> owner_;  // tensor name -> index into files_
};

// The Hugging Face tensor names of a Llama-family checkpoint.
namespace hf {
std::string layer(std::int64_t l, std::string_view rest);  // "model.layers.{l}.{rest}"
inline constexpr std::string_view embed_tokens = "model.embed_tokens.weight";
inline constexpr std::string_view norm = "model.norm.weight";
inline constexpr std::string_view lm_head = "lm_head.weight";
// A layer's tensors, named by what follows "model.layers.{l}.".
inline constexpr std::string_view input_layernorm = "input_layernorm.weight";
inline constexpr std::string_view post_attention_layernorm = "post_attention_layernorm.weight";
inline constexpr std::string_view q_proj = "self_attn.q_proj.weight", k_proj = "self_attn.k_proj.weight",
                                  v_proj = "self_attn.v_proj.weight", o_proj = "self_attn.o_proj.weight";
inline constexpr std::string_view q_proj_bias = "self_attn.q_proj.bias", k_proj_bias = "self_attn.k_proj.bias",
                                  v_proj_bias = "self_attn.v_proj.bias", o_proj_bias = "self_attn.o_proj.bias";
inline constexpr std::string_view q_norm = "self_attn.q_norm.weight", k_norm = "self_attn.k_norm.weight";
inline constexpr std::string_view gate_proj = "mlp.gate_proj.weight", up_proj = "mlp.up_proj.weight",
                                  down_proj = "mlp.down_proj.weight";
}  // namespace hf

}  // namespace dume
