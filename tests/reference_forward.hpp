// An independent float64 forward pass for tests: naive loops over one sequence, written from
// the Hugging Face Llama definition, sharing no code with pipeline/forward.cpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "model.hpp"

namespace dume::test {

using Vec = std::vector<double>;

struct ReferenceRun {
  std::vector<std::vector<Vec>> mlp_inputs;  // [L][S] rows of D
  std::vector<Vec> logits;                   // [S] rows of V
  // The shared linear layers' inputs (RegMean): q/k/v's [L][S] rows of D, o's rows of H*hd,
  // the LM head's [S] rows of D.
  std::vector<std::vector<Vec>> attention_inputs, attention_outputs;
  std::vector<Vec> head_inputs;
};

// y = W x (+ b), W [out, in] row-major.
template <class M>
Vec matvec(const M& W, const Vec& x, const Eigen::VectorXf* bias = nullptr) {
  Vec y(static_cast<std::size_t>(W.rows()));
  for (Eigen::Index o = 0; o < W.rows(); ++o) {
    double s = bias && bias->size() ? static_cast<double>((*bias)(o)) : 0.0;
    for (Eigen::Index i = 0; i < W.cols(); ++i) s += static_cast<double>(W(o, i)) * x[static_cast<std::size_t>(i)];
    y[static_cast<std::size_t>(o)] = s;
  }
  return y;
}

inline Vec rms_norm(const Vec& x, const Eigen::VectorXf& w, double eps) {
  double ms = 0;
  for (double v : x) ms += v * v;
  const double inv = 1.0 / std::sqrt(ms / static_cast<double>(x.size()) + eps);
  Vec y(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) y[i] = x[i] * inv * w(static_cast<Eigen::Index>(i));
  return y;
}

inline Vec mlp(const MlpWeights& w, const Vec& h) {
  const Vec g = matvec(w.gate, h), u = matvec(w.up, h);
  Vec a(g.size());
  for (std::size_t i = 0; i < g.size(); ++i) a[i] = g[i] / (1 + std::exp(-g[i])) * u[i];
  return matvec(w.down, a);
}

// forced_expert >= 0: that expert's MLP everywhere; otherwise the model's routers, top-k.
inline ReferenceRun reference_forward(const Model& m, const std::vector<std::uint32_t>& tokens, int forced_expert) {
  const ModelConfig& c = m.config;
  const auto S = tokens.size();
  const std::int64_t D = c.hidden_size, hd = c.head_dim, H = c.num_heads, group = c.num_heads / c.num_kv_heads;
  std::vector<Vec> x(S, Vec(static_cast<std::size_t>(D)));
  for (std::size_t t = 0; t < S; ++t)
    for (std::int64_t i = 0; i < D; ++i) x[t][static_cast<std::size_t>(i)] = m.shared.embed(tokens[t], i);
  ReferenceRun run;
  for (std::int64_t l = 0; l < c.num_layers; ++l) {
    const LayerWeights& w = m.shared.layers[static_cast<std::size_t>(l)];
    std::vector<Vec> q(S), k(S), v(S);
    auto& attention_inputs = run.attention_inputs.emplace_back();
    for (std::size_t t = 0; t < S; ++t) {
      const Vec h = rms_norm(x[t], w.input_norm, c.rms_norm_eps);
      attention_inputs.push_back(h);
      q[t] = matvec(w.attention.q, h, &w.attention.q_bias);
      k[t] = matvec(w.attention.k, h, &w.attention.k_bias);
      v[t] = matvec(w.attention.v, h, &w.attention.v_bias);
      for (Vec* z : {&q[t], &k[t]})  // rotate_half rotary embedding at position t
        for (std::size_t head = 0; head < z->size() / static_cast<std::size_t>(hd); ++head)
          for (std::int64_t i = 0; i < hd / 2; ++i) {
            const double angle = static_cast<double>(t) / std::pow(c.rope_theta, 2.0 * static_cast<double>(i) / static_cast<double>(hd));
            double& a = (*z)[head * static_cast<std::size_t>(hd) + static_cast<std::size_t>(i)];
            double& b = (*z)[head * static_cast<std::size_t>(hd) + static_cast<std::size_t>(i + hd / 2)];
            const double a0 = a, b0 = b;
            a = a0 * std::cos(angle) - b0 * std::sin(angle);
            b = b0 * std::cos(angle) + a0 * std::sin(angle);
          }
    }
    std::vector<Vec> attended(S, Vec(static_cast<std::size_t>(H * hd)));
    for (std::size_t t = 0; t < S; ++t)
      for (std::int64_t head = 0; head < H; ++head) {
        const std::size_t qo = static_cast<std::size_t>(head * hd), ko = static_cast<std::size_t>((head / group) * hd);
        Vec p(t + 1);
        for (std::size_t j = 0; j <= t; ++j) {
          double s = 0;
          for (std::int64_t i = 0; i < hd; ++i) s += q[t][qo + static_cast<std::size_t>(i)] * k[j][ko + static_cast<std::size_t>(i)];
          p[j] = s / std::sqrt(static_cast<double>(hd));
        }
        const double top = *std::max_element(p.begin(), p.end());
        double sum = 0;
        for (double& z : p) sum += z = std::exp(z - top);
        for (std::size_t j = 0; j <= t; ++j)
          for (std::int64_t i = 0; i < hd; ++i)
            attended[t][qo + static_cast<std::size_t>(i)] += p[j] / sum * v[j][ko + static_cast<std::size_t>(i)];
      }
    run.attention_outputs.push_back(attended);
    auto& inputs = run.mlp_inputs.emplace_back();
    for (std::size_t t = 0; t < S; ++t) {
      const Vec o = matvec(w.attention.o, attended[t], &w.attention.o_bias);
      for (std::size_t i = 0; i < o.size(); ++i) x[t][i] += o[i];
      const Vec h = rms_norm(x[t], w.post_attention_norm, c.rms_norm_eps);
      inputs.push_back(h);
      const auto& experts = m.experts[static_cast<std::size_t>(l)];
      if (forced_expert >= 0) {
        const Vec y = mlp(experts[static_cast<std::size_t>(forced_expert)], h);
        for (std::size_t i = 0; i < y.size(); ++i) x[t][i] += y[i];
        continue;
      }
      const Router& r = m.routers[static_cast<std::size_t>(l)];
      Vec logits = matvec(r.weight, h, &r.bias);
      for (double& z : logits) z /= m.temperature;
      std::vector<std::size_t> order(logits.size());
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return logits[a] > logits[b]; });
      double sum = 0;
      for (int i = 0; i < m.top_k; ++i) sum += std::exp(logits[order[static_cast<std::size_t>(i)]] - logits[order[0]]);
      for (int i = 0; i < m.top_k; ++i) {
        const std::size_t e = order[static_cast<std::size_t>(i)];
        const double weight = std::exp(logits[e] - logits[order[0]]) / sum;
        const Vec y = mlp(experts[e], h);
        for (std::size_t j = 0; j < y.size(); ++j) x[t][j] += weight * y[j];
      }
    }
  }
  const Matrix& out = m.shared.output_embedding();
  for (std::size_t t = 0; t < S; ++t) {
    run.head_inputs.push_back(rms_norm(x[t], m.shared.norm, c.rms_norm_eps));
    run.logits.push_back(matvec(out, run.head_inputs.back()));
  }
  return run;
}

}  // namespace dume::test
