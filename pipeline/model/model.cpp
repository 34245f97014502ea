#include "model.hpp"

#include <cmath>
#include <fstream>
#include <random>

#include "error.hpp"
#include "layer_stream.hpp"

namespace dume {

namespace {
template <class Storage>
std::span<float> span_of(Storage& storage) {
  return {storage.data(), static_cast<std::size_t>(storage.size())};
}
}  // namespace

SharedWeights load_shared_weights(const HfCheckpoint& checkpoint) {
  SharedWeights w;
  for_each_shared_tensor(checkpoint.config(), w, [&](const std::string& hf_name, const std::string&,
                                                     const std::vector<std::int64_t>& shape, auto& storage) {
    checkpoint.read(hf_name, shape, span_of(storage));
  });
  return w;
}

MlpWeights load_mlp(const HfCheckpoint& checkpoint, std::int64_t layer) {
  MlpWeights w;
  for_each_mlp_tensor(checkpoint.config(), w, [&](const std::string& suffix, const std::string&,
                                                  const std::vector<std::int64_t>& shape, auto& storage) {
    checkpoint.read(hf::layer(layer, suffix), shape, span_of(storage));
    checkpoint.release(hf::layer(layer, suffix));
  });
  return w;
}

LayerWeights load_layer_shared(const HfCheckpoint& checkpoint, std::int64_t layer) {
  LayerWeights w;
  for_each_layer_tensor(checkpoint.config(), layer, w, [&](const std::string& name, const std::string&,
                                                          const std::vector<std::int64_t>& shape, auto& storage) {
    checkpoint.read(name, shape, span_of(storage));
    checkpoint.release(name);
  });
  return w;
}

void save_dense_checkpoint(const Model& model, DType dtype, const std::filesystem::path& dir) {
  DUME_ASSERT(model.routers.empty());
  ModelConfig config = model.config;
  config.dtype = dtype;
  std::vector<TensorSource> tensors;  // encoded one at a time as they are written
  const auto add = [&](const std::string& name, const std::vector<std::int64_t>& shape, const auto& values) {
    tensors.push_back({name, dtype, shape, [dtype, &values] {
                         return encode(dtype, {values.data(), static_cast<std::size_t>(values.size())});
                       }});
  };
  for_each_shared_tensor(config, model.shared, [&](const std::string& name, const std::string&,
                                                   const std::vector<std::int64_t>& shape, const auto& values) {
    add(name, shape, values);
  });
  for (std::int64_t l = 0; l < config.num_layers; ++l)
    for_each_mlp_tensor(config, model.experts[static_cast<std::size_t>(l)].at(0),
                        [&](const std::string& suffix, const std::string&, const std::vector<std::int64_t>& shape,
                            const auto& values) { add(hf::layer(l, suffix), shape, values); });
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "config.json") << model_config_to_json(config);
  safetensors_write(dir / "model.safetensors", tensors, {{"format", "pt"}});
}

Model load_dense_model(const HfCheckpoint& checkpoint) {
  return load_whole(checkpoint_layers(checkpoint), empty_model(checkpoint.config(), 1));
}

namespace {

// One tensor of a seeded random model, drawn from its own generator (seed and name), so that a
// checkpoint can be written tensor by tensor: matrices [out, in] uniform in +-1/sqrt(in) (the
// embedding's rows of unit scale), norms 1 +- 0.1, biases +- 0.1.
std::vector<float> random_tensor(const std::string& hf_name, const std::vector<std::int64_t>& shape, std::uint64_t seed) {
  std::uint64_t h = seed ^ 1469598103934665603ull;  // FNV-1a of the name
  for (const char ch : hf_name) h = (h ^ static_cast<unsigned char>(ch)) * 1099511628211ull;
  std::mt19937_64 rng(h);
  std::size_t n = 1;
  for (const auto d : shape) n *= static_cast<std::size_t>(d);
  std::vector<float> values(n);
  const bool bias = hf_name.ends_with(".bias"), norm = hf_name.ends_with("norm.weight");
  if (bias || norm) {
    std::uniform_real_distribution<float> u(-0.1f, 0.1f);
    for (float& v : values) v = (norm ? 1.0f : 0.0f) + u(rng);
    return values;
  }
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const float scale = hf_name == hf::embed_tokens ? 1.0f : 1.0f / std::sqrt(static_cast<float>(shape.at(1)));
  for (float& v : values) v = scale * u(rng);
  return values;
}

}  // namespace

Model random_model(const ModelConfig& config, std::uint64_t seed) {
  Model m;
  m.config = config;
  for_each_shared_tensor(config, m.shared, [&](const std::string& hf_name, const std::string&,
                                               const std::vector<std::int64_t>& shape, auto& storage) {
    const std::vector<float> values = random_tensor(hf_name, shape, seed);
    std::copy(values.begin(), values.end(), storage.data());
  });
  for (std::int64_t l = 0; l < config.num_layers; ++l) {
    MlpWeights& w = m.experts.emplace_back(1)[0];
    for_each_mlp_tensor(config, w, [&](const std::string& suffix, const std::string&,
                                       const std::vector<std::int64_t>& shape, auto& storage) {
      const std::vector<float> values = random_tensor(hf::layer(l, suffix), shape, seed);
      std::copy(values.begin(), values.end(), storage.data());
    });
  }
  return m;
}

void write_random_checkpoint(const ModelConfig& config, std::uint64_t seed, DType dtype,
                             const std::filesystem::path& dir) {
  ModelConfig stored = config;
  stored.dtype = dtype;
  std::vector<TensorSource> tensors;  // each drawn and encoded only when it is written
  const auto add = [&](const std::string& name, const std::vector<std::int64_t>& shape) {
    tensors.push_back({name, dtype, shape, [name, shape, seed, dtype] {
                         return encode(dtype, random_tensor(name, shape, seed));
                       }});
  };
  const SharedWeights names;  // a const walk visits names and shapes only
  for_each_shared_tensor(config, names, [&](const std::string& name, const std::string&,
                                            const std::vector<std::int64_t>& shape, const auto&) { add(name, shape); });
  const MlpWeights mlp;
  for (std::int64_t l = 0; l < config.num_layers; ++l)
    for_each_mlp_tensor(config, mlp, [&](const std::string& suffix, const std::string&,
                                         const std::vector<std::int64_t>& shape, const auto&) {
      add(hf::layer(l, suffix), shape);
    });
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "config.json") << model_config_to_json(stored);
  safetensors_write(dir / "model.safetensors", tensors, {{"format", "pt"}});
}

}  // namespace dume
