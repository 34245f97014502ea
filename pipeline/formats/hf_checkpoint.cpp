#include "hf_checkpoint.hpp"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "error.hpp"

namespace dume {

namespace fs = std::filesystem;
using nlohmann::json;

std::string hf::layer(std::int64_t l, std::string_view rest) {
  return "model.layers." + std::to_string(l) + "." + std::string(rest);
}

namespace {

// Shard names from the index; each must be a plain file name inside the directory.
std::vector<std::string> read_index(const fs::path& index_path, json& weight_map) {
  std::ifstream in(index_path);
  if (!in) throw Error(index_path.string() + ": cannot read");
  json index;
  try {
    index = json::parse(in);
  } catch (const json::exception& e) {
    throw Error(index_path.string() + ": invalid JSON: " + e.what());
  }
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    throw Error(index_path.string() + ": no 'weight_map' object");
  weight_map = index["weight_map"];
  std::vector<std::string> shards;
  for (const auto& [name, file] : weight_map.items()) {
    if (!file.is_string()) throw Error(index_path.string() + ": weight_map entry '" + name + "' is not a file name");
    const std::string f = file.get<std::string>();
    if (f.empty() || f.find('/') != std::string::npos || f == "." || f == "..")
      throw Error(index_path.string() + ": weight_map entry '" + name + "' names '" + f +
                  "', not a file in the checkpoint directory");
    if (std::find(shards.begin(), shards.end(), f) == shards.end()) shards.push_back(f);
  }
  std::sort(shards.begin(), shards.end());
  return shards;
}

// The tensor names config.json implies; each must be in some file. (A Mixtral's expert
// tensors come in two layouts; its loader checks them.)
std::vector<std::string> required_tensors(const ModelConfig& c) {
  std::vector<std::string> names = {std::string(hf::embed_tokens), std::string(hf::norm)};
  if (!c.tie_word_embeddings) names.emplace_back(hf::lm_head);
  for (std::int64_t l = 0; l < c.num_layers; ++l) {
    for (const std::string_view t : {hf::input_layernorm, hf::post_attention_layernorm, hf::q_proj, hf::k_proj,
                                         hf::v_proj, hf::o_proj})
      names.push_back(hf::layer(l, t));
    if (!c.num_experts)
      for (const std::string_view t : {hf::gate_proj, hf::up_proj, hf::down_proj})
        names.push_back(hf::layer(l, t));
    if (c.qkv_bias)
      for (const std::string_view t : {hf::q_proj_bias, hf::k_proj_bias, hf::v_proj_bias})
        names.push_back(hf::layer(l, t));
    if (c.o_bias) names.push_back(hf::layer(l, hf::o_proj_bias));
    if (c.qk_norm)
      for (const std::string_view t : {hf::q_norm, hf::k_norm}) names.push_back(hf::layer(l, t));
  }
  return names;
}

}  // namespace

HfCheckpoint::HfCheckpoint(const fs::path& dir) : dir_(dir), config_(model_config_read(dir)) {
  const fs::path single = dir / "model.safetensors", index_path = dir / "model.safetensors.index.json";
  if (fs::exists(index_path)) {
    json weight_map;
    const auto shards = read_index(index_path, weight_map);
    for (const auto& shard : shards) files_.emplace_back(dir / shard);
    for (const auto& [name, file] : weight_map.items()) {
      const auto pos = std::find(shards.begin(), shards.end(), file.get<std::string>()) - shards.begin();
      if (!files_[static_cast<std::size_t>(pos)].find(name))
        throw Error(index_path.string() + ": lists '" + name + "' in " + file.get<std::string>() +
                    ", which does not hold it");
      owner_.emplace(name, static_cast<std::size_t>(pos));
    }
  } else if (fs::exists(single)) {
    files_.emplace_back(single);
    for (const auto& t : files_[0].tensors()) owner_.emplace(t.name, 0);
  } else {
    throw Error(dir.string() + ": no model.safetensors or model.safetensors.index.json");
  }
  for (const auto& name : required_tensors(config_))
    if (!has(name))
      throw Error(dir.string() + ": tensor '" + name + "' required by config.json (num_hidden_layers=" +
                  std::to_string(config_.num_layers) + ") is in no file");
}

bool HfCheckpoint::has(std::string_view name) const { return owner_.contains(std::string(name)); }

const TensorInfo& HfCheckpoint::info(std::string_view name, const SafetensorsFile** file) const {
  const auto it = owner_.find(std::string(name));
  if (it == owner_.end()) throw Error(dir_.string() + ": no tensor '" + std::string(name) + "'");
  const SafetensorsFile& f = files_[it->second];
  if (file) *file = &f;
  return *f.find(name);
}

void HfCheckpoint::read(std::string_view name, std::span<const std::int64_t> shape, std::span<float> out) const {
  std::size_t numel = 1;
  for (auto d : shape) numel *= static_cast<std::size_t>(d);
  DUME_ASSERT(out.size() == numel);
  read_slice(name, shape, 0, out);
}

void HfCheckpoint::read_slice(std::string_view name, std::span<const std::int64_t> shape, std::size_t begin,
                            std::span<float> out) const {
  const SafetensorsFile* file = nullptr;
  const TensorInfo& t = info(name, &file);
  const std::string where = file->path().string() + ": tensor '" + std::string(name) + "'";
  if (!std::equal(t.shape.begin(), t.shape.end(), shape.begin(), shape.end()))
    throw Error(where + " has shape " + shape_string(t.shape) + ", config.json implies " + shape_string(shape));
  if (!dtype_is_float(t.dtype) || t.dtype == DType::F64)
    throw Error(where + " has dtype " + std::string(to_string(t.dtype)) + " (weights must be F32, F16 or BF16)");
  DUME_ASSERT(begin + out.size() <= t.numel());
  const std::size_t bad =
      widen_to_f32(t.dtype, file->data(t).data() + begin * dtype_size(t.dtype), out.size(), out.data());
  if (bad != out.size())
    throw Error(where + " holds a non-finite value (" + std::to_string(out[bad]) + ") at flat index " +
                std::to_string(begin + bad));
}

void HfCheckpoint::release(std::string_view name) const {
  const SafetensorsFile* file = nullptr;
  const TensorInfo& t = info(name, &file);
  file->release(t);
}

void HfCheckpoint::release(std::string_view name, std::size_t begin, std::size_t count) const {
  const SafetensorsFile* file = nullptr;
  const TensorInfo& t = info(name, &file);
  const std::size_t size = dtype_size(t.dtype);
  file->release(file->data(t).subspan(begin * size, count * size));
}

DType HfCheckpoint::dtype() const {
  return info(hf::embed_tokens).dtype;
}

}  // namespace dume
