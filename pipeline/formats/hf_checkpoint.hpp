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

class Checkpoint {
 public:
  explicit Checkpoint(const std::filesystem::path& dir);  // throws Error naming the file and problem

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
}  // namespace hf

}  // namespace dume
