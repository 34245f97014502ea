#include "model.hpp"

#include <cmath>
#include <deque>
#include <fstream>
#include <random>

#include "error.hpp"

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
  });
  return w;
}

void save_dense_checkpoint(const Model& model, DType dtype, const std::filesystem::path& dir) {
  DUME_ASSERT(model.routers.empty());
  ModelConfig config = model.config;
  config.dtype = dtype;
  std::deque<std::vector<std::byte>> storage;  // stable: tensors hold spans into it
  std::vector<TensorBytes> tensors;
  const auto add = [&](const std::string& name, const std::vector<std::int64_t>& shape, const auto& values) {
    storage.push_back(encode(dtype, {values.data(), static_cast<std::size_t>(values.size())}));
    tensors.push_back({name, dtype, shape, storage.back()});
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
  Model m;
  m.config = checkpoint.config();
  m.shared = load_shared_weights(checkpoint);
  for (std::int64_t l = 0; l < m.config.num_layers; ++l) m.experts.push_back({load_mlp(checkpoint, l)});
  return m;
}

Model random_model(const ModelConfig& config, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  const auto matrix = [&rng](std::int64_t rows, std::int64_t cols) {
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    const float scale = 1.0f / std::sqrt(static_cast<float>(cols));
    Matrix m(rows, cols);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = scale * u(rng);
    return m;
  };
  const auto vector = [&rng](std::int64_t n, float center, float spread) {
    std::uniform_real_distribution<float> u(-spread, spread);
    Vector v(n);
    for (Eigen::Index i = 0; i < n; ++i) v[i] = center + u(rng);
    return v;
  };
  const ModelConfig& c = config;
  const std::int64_t D = c.hidden_size, F = c.intermediate_size;
  Model m;
  m.config = c;
  m.shared.embed = matrix(c.vocab_size, D) * std::sqrt(static_cast<float>(D));  // rows of unit scale
  m.shared.norm = vector(D, 1.0f, 0.1f);
  if (!c.tie_word_embeddings) m.shared.lm_head = matrix(c.vocab_size, D);
  for (std::int64_t l = 0; l < c.num_layers; ++l) {
    LayerWeights layer;
    layer.input_norm = vector(D, 1.0f, 0.1f);
    layer.post_attention_norm = vector(D, 1.0f, 0.1f);
    AttentionWeights& a = layer.attention;
    a.q = matrix(c.q_dim(), D);
    a.k = matrix(c.kv_dim(), D);
    a.v = matrix(c.kv_dim(), D);
    a.o = matrix(D, c.q_dim());
    if (c.qkv_bias) {
      a.q_bias = vector(c.q_dim(), 0.0f, 0.1f);
      a.k_bias = vector(c.kv_dim(), 0.0f, 0.1f);
      a.v_bias = vector(c.kv_dim(), 0.0f, 0.1f);
    }
    if (c.o_bias) a.o_bias = vector(D, 0.0f, 0.1f);
    m.shared.layers.push_back(std::move(layer));
    m.experts.push_back({MlpWeights{matrix(F, D), matrix(F, D), matrix(D, F)}});
  }
  return m;
}

}  // namespace dume
