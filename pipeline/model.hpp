// Model weights in f32, in Hugging Face shapes ([out, in], row-major). One structure serves the
// dense model (one MLP per layer) and the MoE (E MLPs per layer plus a router).
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <vector>

#include "checkpoint.hpp"
#include "model_config.hpp"

namespace dume {

using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Vector = Eigen::VectorXf;

struct AttentionWeights {
  Matrix q, k, v, o;                     // q [H*hd, D], k/v [Hkv*hd, D], o [D, H*hd]
  Vector q_bias, k_bias, v_bias, o_bias;  // empty when the architecture has none
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

// A linear router over E experts: logits = (x W^T + b) / T, top-k, softmax over the k.
struct Router {
  Matrix weight;  // [E, D]
  Vector bias;    // [E]
};

struct Model {
  ModelConfig config;
  SharedWeights shared;
  std::vector<std::vector<MlpWeights>> experts;  // [L][E]; a dense model has E = 1
  std::vector<Router> routers;                   // [L]; empty for a dense model
  float temperature = 1.0f;
  int top_k = 1;
};

SharedWeights load_shared_weights(const Checkpoint& checkpoint);
MlpWeights load_mlp(const Checkpoint& checkpoint, std::int64_t layer);
Model load_dense_model(const Checkpoint& checkpoint);
// A dense model of the given shape with seeded random weights, for benchmarks and tests:
// each [out, in] matrix uniform in +-1/sqrt(in), norms 1 + small noise, biases small.
Model random_model(const ModelConfig& config, std::uint64_t seed);

}  // namespace dume
