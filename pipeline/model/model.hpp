// Model weights in f32, in Hugging Face shapes ([out, in], row-major). One structure serves the
// dense model (one MLP per layer) and the MoE (E MLPs per layer plus a router).
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <filesystem>
#include <string>
#include <type_traits>
#include <vector>

#include "hf_checkpoint.hpp"
#include "model_config.hpp"
#include "routing.hpp"

namespace dume {

using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Vector = Eigen::VectorXf;

struct AttentionWeights {
  Matrix q, k, v, o;                     // q [H*hd, D], k/v [Hkv*hd, D], o [D, H*hd]
  Vector q_bias, k_bias, v_bias, o_bias;  // empty when the architecture has none
  Vector q_norm, k_norm;                  // [hd], per-head RMSNorm weights (Qwen3); else empty
};

struct MlpWeights {
  Matrix gate, up, down;  // gate/up [F, D], down [D, F]
};

struct LayerWeights {
  Vector input_norm, post_attention_norm;  // [D]
  AttentionWeights attention;
};

// Every parameter that is not an MLP weight: what DUME averages over the experts.
struct SharedWeights {
  Matrix embed;    // [V, D]
  std::vector<LayerWeights> layers;
  Vector norm;     // [D]
  Matrix lm_head;  // [V, D]; empty when tied to embed
  const Matrix& output_embedding() const { return lm_head.size() ? lm_head : embed; }
};

// A router over E experts: logits / T, top-k, softmax over the k. Linear: logits = x W^T + b.
// Gaussian (`quadratic` set): logit_e = b_e - 1/2 |Q_e (x - W_e)|^2, the log-density of domain
// e's MLP inputs (W_e their mean, Q_e the inverse Cholesky factor of their covariance).
struct Router {
  Matrix weight;     // [E, D]
  Vector bias;       // [E]
  Matrix quadratic;  // [E*D, D]: Q_0 ... Q_{E-1} stacked; empty for a linear router
};

struct Model {
  ModelConfig config;
  SharedWeights shared;
  std::vector<std::vector<MlpWeights>> experts;  // [L][E]; a dense model has E = 1
  std::vector<Router> routers;                   // [L]; empty for a dense model
  // router.expert_attention: each expert's own attention [L][E], mixed per token by the routing
  // decision like the MLPs; empty when the attention is shared.
  std::vector<std::vector<AttentionWeights>> expert_attention;
  float temperature = 1.0f;
  int top_k = 1;
  Routing routing;  // how router logits become decisions (routing.hpp)
};

// Visits every shared tensor in file order: fn(hf_name, moe_path, shape, storage), where
// storage is the Matrix or Vector of `w` (const when `w` is). One walk serves loading,
// averaging, hashing and writing, so the names, paths and shapes are written down once.
// Storage is resized to its shape first when `w` is mutable.
template <class Weights, class Fn>
void for_each_shared_tensor(const ModelConfig& c, Weights& w, Fn&& fn);

// The same for the shared tensors of layer l (LayerWeights), in the same order.
template <class Layer, class Fn>
void for_each_layer_tensor(const ModelConfig& c, std::int64_t l, Layer& layer, Fn&& fn);
// The same for one MLP: fn(hf_suffix "mlp.gate_proj.weight", moe_name "gate_proj", shape, storage).
template <class Weights, class Fn>
void for_each_mlp_tensor(const ModelConfig& c, Weights& w, Fn&& fn);
// And for one attention: fn(hf_suffix "self_attn.q_proj.weight", moe_name "self_attn/q_proj", ...).
template <class Weights, class Fn>
void for_each_attention_tensor(const ModelConfig& c, Weights& a, Fn&& fn);

SharedWeights load_shared_weights(const HfCheckpoint& checkpoint);
MlpWeights load_mlp(const HfCheckpoint& checkpoint, std::int64_t layer);
// Layer l's shared tensors (norms, attention), their mapped pages let go once read.
LayerWeights load_layer_shared(const HfCheckpoint& checkpoint, std::int64_t layer);
Model load_dense_model(const HfCheckpoint& checkpoint);
// Writes a dense model (E = 1) as a Hugging Face checkpoint: config.json + model.safetensors,
// weights rounded to `dtype`.
void save_dense_checkpoint(const Model& model, DType dtype, const std::filesystem::path& dir);

// A dense model of the given shape with seeded random weights, for benchmarks and tests:
// each [out, in] matrix uniform in +-1/sqrt(in), norms 1 + small noise, biases small. Each
// tensor has its own generator, so the same model can be written tensor by tensor:
Model random_model(const ModelConfig& config, std::uint64_t seed);
// random_model(config, seed) as a Hugging Face checkpoint in `dtype`, one tensor in memory at a
// time (a whole 8B model would be 32 GB in f32).
void write_random_checkpoint(const ModelConfig& config, std::uint64_t seed, DType dtype, const std::filesystem::path& dir);

namespace detail {
inline void resize_to(Matrix& m, const std::vector<std::int64_t>& shape) { m.resize(shape[0], shape[1]); }
inline void resize_to(Vector& v, const std::vector<std::int64_t>& shape) { v.resize(shape[0]); }
template <class T>
void resize_to(const T&, const std::vector<std::int64_t>&) {}  // const weights: already sized
template <class Storage, class Fn>
void visit(Fn& fn, const std::string& hf, const std::string& moe, std::vector<std::int64_t> shape, Storage& storage) {
  resize_to(storage, shape);
  fn(hf, moe, shape, storage);
}
}  // namespace detail

template <class Weights, class Fn>
void for_each_shared_tensor(const ModelConfig& c, Weights& w, Fn&& fn) {
  const std::int64_t D = c.hidden_size, V = c.vocab_size;
  detail::visit(fn, std::string(hf::embed_tokens), "/embed_tokens", {V, D}, w.embed);
  if constexpr (!std::is_const_v<Weights>) w.layers.resize(static_cast<std::size_t>(c.num_layers));
  for (std::int64_t l = 0; l < c.num_layers; ++l) {
    // Const weights may be unsized (walks for names and shapes only): no layer to index then.
    static const LayerWeights no_layer;
    auto& layer = [&]() -> auto& {
      if constexpr (std::is_const_v<Weights>)
        if (static_cast<std::size_t>(l) >= w.layers.size()) return no_layer;
      return w.layers[static_cast<std::size_t>(l)];
    }();
    for_each_layer_tensor(c, l, layer, fn);
  }
  detail::visit(fn, std::string(hf::norm), "/norm", {D}, w.norm);
  if (!c.tie_word_embeddings) detail::visit(fn, std::string(hf::lm_head), "/lm_head", {V, D}, w.lm_head);
}

template <class Layer, class Fn>
void for_each_layer_tensor(const ModelConfig& c, std::int64_t l, Layer& layer, Fn&& fn) {
  const std::int64_t D = c.hidden_size;
  const std::string h = hf::layer(l, ""), m = "/layers/" + std::to_string(l) + "/";
  detail::visit(fn, hf::layer(l, hf::input_layernorm), m + "input_layernorm", {D}, layer.input_norm);
  detail::visit(fn, hf::layer(l, hf::post_attention_layernorm), m + "post_attention_layernorm", {D}, layer.post_attention_norm);
  for_each_attention_tensor(c, layer.attention, [&](const std::string& suffix, const std::string& name,
                                                    const std::vector<std::int64_t>& shape, auto& storage) {
    fn(h + suffix, m + name, shape, storage);
  });
}

template <class Weights, class Fn>
void for_each_mlp_tensor(const ModelConfig& c, Weights& w, Fn&& fn) {
  const std::int64_t D = c.hidden_size, F = c.intermediate_size;
  detail::visit(fn, std::string(hf::gate_proj), "gate_proj", {F, D}, w.gate);
  detail::visit(fn, std::string(hf::up_proj), "up_proj", {F, D}, w.up);
  detail::visit(fn, std::string(hf::down_proj), "down_proj", {D, F}, w.down);
}

template <class Weights, class Fn>
void for_each_attention_tensor(const ModelConfig& c, Weights& a, Fn&& fn) {
  const std::int64_t D = c.hidden_size;
  detail::visit(fn, std::string(hf::q_proj), "self_attn/q_proj", {c.q_dim(), D}, a.q);
  detail::visit(fn, std::string(hf::k_proj), "self_attn/k_proj", {c.kv_dim(), D}, a.k);
  detail::visit(fn, std::string(hf::v_proj), "self_attn/v_proj", {c.kv_dim(), D}, a.v);
  detail::visit(fn, std::string(hf::o_proj), "self_attn/o_proj", {D, c.q_dim()}, a.o);
  if (c.qkv_bias) {
    detail::visit(fn, std::string(hf::q_proj_bias), "self_attn/q_proj_bias", {c.q_dim()}, a.q_bias);
    detail::visit(fn, std::string(hf::k_proj_bias), "self_attn/k_proj_bias", {c.kv_dim()}, a.k_bias);
    detail::visit(fn, std::string(hf::v_proj_bias), "self_attn/v_proj_bias", {c.kv_dim()}, a.v_bias);
  }
  if (c.o_bias) detail::visit(fn, std::string(hf::o_proj_bias), "self_attn/o_proj_bias", {D}, a.o_bias);
  if (c.qk_norm) {
    detail::visit(fn, std::string(hf::q_norm), "self_attn/q_norm", {c.head_dim}, a.q_norm);
    detail::visit(fn, std::string(hf::k_norm), "self_attn/k_norm", {c.head_dim}, a.k_norm);
  }
}

}  // namespace dume
