#include "model.hpp"

#include <cmath>
#include <random>

namespace dume {

namespace {

Matrix read_matrix(const Checkpoint& c, std::string_view name, std::int64_t rows, std::int64_t cols) {
  Matrix m(rows, cols);
  const std::int64_t shape[] = {rows, cols};
  c.read(name, shape, {m.data(), static_cast<std::size_t>(m.size())});
  return m;
}

Vector read_vector(const Checkpoint& c, std::string_view name, std::int64_t n) {
  Vector v(n);
  const std::int64_t shape[] = {n};
  c.read(name, shape, {v.data(), static_cast<std::size_t>(n)});
  return v;
}

}  // namespace

SharedWeights load_shared_weights(const Checkpoint& checkpoint) {
  const ModelConfig& c = checkpoint.config();
  const std::int64_t D = c.hidden_size;
  SharedWeights w;
  w.embed = read_matrix(checkpoint, hf::embed_tokens, c.vocab_size, D);
  w.norm = read_vector(checkpoint, hf::norm, D);
  if (!c.tie_word_embeddings) w.lm_head = read_matrix(checkpoint, hf::lm_head, c.vocab_size, D);
  w.layers.resize(static_cast<std::size_t>(c.num_layers));
  for (std::int64_t l = 0; l < c.num_layers; ++l) {
    LayerWeights& layer = w.layers[static_cast<std::size_t>(l)];
    const auto name = [l](std::string_view rest) { return hf::layer(l, rest); };
    layer.input_norm = read_vector(checkpoint, name("input_layernorm.weight"), D);
    layer.post_attention_norm = read_vector(checkpoint, name("post_attention_layernorm.weight"), D);
    AttentionWeights& a = layer.attention;
    a.q = read_matrix(checkpoint, name("self_attn.q_proj.weight"), c.q_dim(), D);
    a.k = read_matrix(checkpoint, name("self_attn.k_proj.weight"), c.kv_dim(), D);
    a.v = read_matrix(checkpoint, name("self_attn.v_proj.weight"), c.kv_dim(), D);
    a.o = read_matrix(checkpoint, name("self_attn.o_proj.weight"), D, c.q_dim());
    if (c.qkv_bias) {
      a.q_bias = read_vector(checkpoint, name("self_attn.q_proj.bias"), c.q_dim());
      a.k_bias = read_vector(checkpoint, name("self_attn.k_proj.bias"), c.kv_dim());
      a.v_bias = read_vector(checkpoint, name("self_attn.v_proj.bias"), c.kv_dim());
    }
    if (c.o_bias) a.o_bias = read_vector(checkpoint, name("self_attn.o_proj.bias"), D);
  }
  return w;
}

MlpWeights load_mlp(const Checkpoint& checkpoint, std::int64_t layer) {
  const ModelConfig& c = checkpoint.config();
  const std::int64_t D = c.hidden_size, F = c.intermediate_size;
  return {read_matrix(checkpoint, hf::layer(layer, "mlp.gate_proj.weight"), F, D),
          read_matrix(checkpoint, hf::layer(layer, "mlp.up_proj.weight"), F, D),
          read_matrix(checkpoint, hf::layer(layer, "mlp.down_proj.weight"), D, F)};
}

Model load_dense_model(const Checkpoint& checkpoint) {
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
