// An independent float64 forward pass for tests: naive loops over one sequence, written from
// the Hugging Face Llama definition, sharing no code with pipeline/model/forward.cpp.
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

// The attention block at layer l over one sequence: the attended values (before o) and o's output.
inline std::pair<std::vector<Vec>, std::vector<Vec>> attention_block(const ModelConfig& c, const AttentionWeights& a,
                                                                      const std::vector<Vec>& hs) {
  const std::size_t S = hs.size();
  const std::int64_t hd = c.head_dim, H = c.num_heads, group = c.num_heads / c.num_kv_heads;
  std::vector<Vec> q(S), k(S), v(S);
  for (std::size_t t = 0; t < S; ++t) {
    q[t] = matvec(a.q, hs[t], &a.q_bias);
    k[t] = matvec(a.k, hs[t], &a.k_bias);
    v[t] = matvec(a.v, hs[t], &a.v_bias);
    if (c.qk_norm)  // Qwen3: each head's q and k RMS-normalized
      for (auto [z, norm] : {std::pair{&q[t], &a.q_norm}, std::pair{&k[t], &a.k_norm}})
        for (std::size_t head = 0; head < z->size() / static_cast<std::size_t>(hd); ++head) {
          const Vec part(z->begin() + static_cast<std::ptrdiff_t>(head * static_cast<std::size_t>(hd)),
                         z->begin() + static_cast<std::ptrdiff_t>((head + 1) * static_cast<std::size_t>(hd)));
          const Vec normed = rms_norm(part, *norm, c.rms_norm_eps);
          std::copy(normed.begin(), normed.end(), z->begin() + static_cast<std::ptrdiff_t>(head * static_cast<std::size_t>(hd)));
        }
    for (Vec* z : {&q[t], &k[t]})  // rotate_half rotary embedding at position t
      for (std::size_t head = 0; head < z->size() / static_cast<std::size_t>(hd); ++head)
        for (std::int64_t i = 0; i < hd / 2; ++i) {
          const double angle = static_cast<double>(t) / std::pow(c.rope_theta, 2.0 * static_cast<double>(i) / static_cast<double>(hd));
          double& x = (*z)[head * static_cast<std::size_t>(hd) + static_cast<std::size_t>(i)];
          double& y = (*z)[head * static_cast<std::size_t>(hd) + static_cast<std::size_t>(i + hd / 2)];
          const double x0 = x, y0 = y;
          x = x0 * std::cos(angle) - y0 * std::sin(angle);
          y = y0 * std::cos(angle) + x0 * std::sin(angle);
        }
  }
  std::vector<Vec> attended(S, Vec(static_cast<std::size_t>(H * hd))), out;
  for (std::size_t t = 0; t < S; ++t) {
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
    out.push_back(matvec(a.o, attended[t], &a.o_bias));
  }
  return {attended, out};
}

// Top-k of one token's logits (ties to the lower index) and the softmax over those k.
inline std::vector<std::pair<std::size_t, double>> top_k(const Vec& logits, int k) {
  std::vector<std::size_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return logits[a] > logits[b]; });
  double sum = 0;
  for (int i = 0; i < k; ++i) sum += std::exp(logits[order[static_cast<std::size_t>(i)]] - logits[order[0]]);
  std::vector<std::pair<std::size_t, double>> chosen;
  for (int i = 0; i < k; ++i) {
    const std::size_t e = order[static_cast<std::size_t>(i)];
    chosen.emplace_back(e, std::exp(logits[e] - logits[order[0]]) / sum);
  }
  return chosen;
}

// forced_expert >= 0: that expert's MLP (and attention, with expert attention) everywhere;
// otherwise the model's linear routers, top-k, per token. With expert attention (routing
// mean+layer:0): a pass with the shared attention through layer 0 takes one decision per token
// from the running mean of its router logits, which mixes every layer's attention and MLPs.
inline ReferenceRun reference_forward(const Model& m, const std::vector<std::uint32_t>& tokens, int forced_expert) {
  const ModelConfig& c = m.config;
  const auto S = tokens.size();
  const std::int64_t D = c.hidden_size;
  const auto embed = [&] {
    std::vector<Vec> x(S, Vec(static_cast<std::size_t>(D)));
    for (std::size_t t = 0; t < S; ++t)
      for (std::int64_t i = 0; i < D; ++i) x[t][static_cast<std::size_t>(i)] = m.shared.embed(tokens[t], i);
    return x;
  };
  const auto router_logits = [&](std::int64_t l, const Vec& h) {
    const Router& r = m.routers[static_cast<std::size_t>(l)];
    Vec logits = matvec(r.weight, h, &r.bias);
    for (double& z : logits) z /= m.temperature;
    return logits;
  };
  const bool mixed = !m.expert_attention.empty() && forced_expert < 0;
  std::vector<std::vector<std::pair<std::size_t, double>>> decision;  // per token
  if (mixed) {
    std::vector<Vec> x = embed(), hs;
    const LayerWeights& w = m.shared.layers[0];
    for (std::size_t t = 0; t < S; ++t) hs.push_back(rms_norm(x[t], w.input_norm, c.rms_norm_eps));
    const auto o = attention_block(c, w.attention, hs).second;
    Vec mean;
    for (std::size_t t = 0; t < S; ++t) {
      for (std::size_t i = 0; i < x[t].size(); ++i) x[t][i] += o[t][i];
      const Vec logits = router_logits(0, rms_norm(x[t], w.post_attention_norm, c.rms_norm_eps));
      if (mean.empty()) mean.assign(logits.size(), 0.0);
      for (std::size_t e = 0; e < logits.size(); ++e) mean[e] += (logits[e] - mean[e]) / static_cast<double>(t + 1);
      decision.push_back(top_k(mean, m.top_k));
    }
  }
  std::vector<Vec> x = embed();
  ReferenceRun run;
  for (std::int64_t l = 0; l < c.num_layers; ++l) {
    const auto L = static_cast<std::size_t>(l);
    const LayerWeights& w = m.shared.layers[L];
    auto& attention_inputs = run.attention_inputs.emplace_back();
    for (std::size_t t = 0; t < S; ++t) attention_inputs.push_back(rms_norm(x[t], w.input_norm, c.rms_norm_eps));
    if (mixed) {
      std::vector<std::vector<Vec>> outputs;  // each expert's attention over the whole sequence
      for (const AttentionWeights& a : m.expert_attention[L]) outputs.push_back(attention_block(c, a, attention_inputs).second);
      for (std::size_t t = 0; t < S; ++t)
        for (const auto& [e, weight] : decision[t])
          for (std::size_t i = 0; i < x[t].size(); ++i) x[t][i] += weight * outputs[e][t][i];
    } else {
      const AttentionWeights& a = forced_expert >= 0 && !m.expert_attention.empty()
                                      ? m.expert_attention[L][static_cast<std::size_t>(forced_expert)]
                                      : w.attention;
      auto [attended, o] = attention_block(c, a, attention_inputs);
      run.attention_outputs.push_back(attended);
      for (std::size_t t = 0; t < S; ++t)
        for (std::size_t i = 0; i < x[t].size(); ++i) x[t][i] += o[t][i];
    }
    auto& inputs = run.mlp_inputs.emplace_back();
    for (std::size_t t = 0; t < S; ++t) {
      const Vec h = rms_norm(x[t], w.post_attention_norm, c.rms_norm_eps);
      inputs.push_back(h);
      const auto& experts = m.experts[L];
      const auto chosen = forced_expert >= 0 ? std::vector<std::pair<std::size_t, double>>{{static_cast<std::size_t>(forced_expert), 1.0}}
                          : mixed            ? decision[t]
                                             : top_k(router_logits(l, h), m.top_k);
      for (const auto& [e, weight] : chosen) {
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
