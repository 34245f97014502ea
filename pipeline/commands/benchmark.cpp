#include "benchmark.hpp"

#include <cblas.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <limits>
#include <numbers>
#include <random>

#include "comm.hpp"
#include "forward.hpp"
#include "gemm_rate.hpp"
#include "hdf5_util.hpp"
#include "merge.hpp"
#include "model.hpp"
#include "moe_file.hpp"
#include "routers.hpp"
#include "statistics.hpp"

namespace dume {

namespace fs = std::filesystem;

ModelConfig bench_preset(const std::string& name) {
  struct Preset {
    const char* name;
    std::int64_t D, F, L, H, Hkv, V;
  };
  static constexpr Preset presets[] = {
      {"tiny", 128, 352, 4, 4, 2, 256},
      {"d1024", 1024, 2816, 8, 16, 8, 32000},
      {"llama-1b-shape", 2048, 8192, 16, 32, 8, 128256},
      {"llama-8b-shape", 4096, 14336, 32, 32, 8, 128256},
      {"llama-70b-shape", 8192, 28672, 80, 64, 8, 128256},
  };
  for (const auto& p : presets)
    if (name == p.name) {
      ModelConfig c;
      c.architecture_name = "LlamaForCausalLM";
      c.hidden_size = p.D;
      c.intermediate_size = p.F;
      c.num_layers = p.L;
      c.num_heads = p.H;
      c.num_kv_heads = p.Hkv;
      c.head_dim = p.D / p.H;
      c.vocab_size = p.V;
      c.max_position_embeddings = 8192;
      c.rms_norm_eps = 1e-5;
      c.rope_theta = 500000.0;
      c.json_text = model_config_to_json(c);
      return c;
    }
  throw Error("unknown preset '" + name + "' (presets: tiny, d1024, llama-1b-shape, llama-8b-shape, llama-70b-shape)");
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

double spread(const std::vector<double>& v) {
  return v.empty() ? 0.0 : *std::max_element(v.begin(), v.end()) - *std::min_element(v.begin(), v.end());
}

namespace {

using Clock = std::chrono::steady_clock;
using Rows = std::vector<double>;  // f64 rows, row-major

// Runs `work` once to warm up, then `repeat` timed times; seconds of each. Collective work
// starts every run with all ranks in step.
template <class Work>
std::vector<double> time_runs(int repeat, Work&& work, bool collective = true) {
  work();
  std::vector<double> seconds;
  for (int r = 0; r < repeat; ++r) {
    if (collective) barrier();
    const auto t0 = Clock::now();
    work();
    seconds.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return seconds;
}

std::vector<std::uint32_t> random_tokens(std::size_t n, std::int64_t vocab) {
  std::mt19937_64 rng(7);
  std::vector<std::uint32_t> tokens(n);
  for (auto& t : tokens) t = static_cast<std::uint32_t>(rng() % static_cast<std::uint64_t>(vocab));
  return tokens;
}

// The backend's own f32 GEMM (its linear() on square matrices), for backends other than the CPU.
GemmRate backend_gemm_rate(Backend& backend, std::int64_t n) {
  const auto elements = static_cast<std::size_t>(n * n);
  const std::vector<float> host(elements, 1.0f / static_cast<float>(n));
  const Buffer a = backend.upload(host), w = backend.upload(host), y = backend.alloc(elements);
  const auto product = [&] { backend.linear(a.data(), w.data(), nullptr, n, n, n, y.data()); };
  product();
  backend.synchronize();
  int runs = 0;
  const auto t0 = Clock::now();
  double seconds = 0;
  while (seconds < 0.5) {
    product();
    backend.synchronize();
    ++runs;
    seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  }
  return {"backend sgemm", n, 2.0 * std::pow(static_cast<double>(n), 3) * runs / seconds / 1e9};
}

// FLOPs of the calibration pass: every layer but the last MLP, no final norm or lm_head.
double calibration_flops(const ModelConfig& c, std::int64_t B, std::int64_t S) {
  return Forward::flops(c, B, S, false) -
         2.0 * static_cast<double>(B * S) * 3.0 * static_cast<double>(c.hidden_size * c.intermediate_size);
}

// ---- The limits.

struct Limits {
  GemmRate f32, stats, f64;  // of the forward pass, of the statistics update, of the solve
};

std::string rate_name(const GemmRate& r) { return r.kernel + " n=" + std::to_string(r.n); }

// Measures the GEMM rates (one row each, first in the table) and picks each phase's limit.
Limits measure_limits(const ModelConfig& c, Backend& backend, std::vector<PhaseResult>& phases) {
  // Square GEMMs up to 4x the model width, at least 1024: a tiny model's limit needs no 4096^3
  // product (minutes under the sanitizers).
  std::vector<std::int64_t> sizes;
  for (const std::int64_t size : {1024, 2048, 4096})
    if (size <= std::max<std::int64_t>(1024, 4 * c.hidden_size)) sizes.push_back(size);
  auto rates = measure_gemm_rates(sizes, 0.5);
  if (backend.kind() != BackendKind::cpu)
    for (const std::int64_t size : sizes) rates.push_back(backend_gemm_rate(backend, size));
  // A GPU's forward and statistics run against its own f32 GEMM (the statistics' f64 SYRK too, as
  // the tensor cores set the pace); the solve runs on the host against the host's f64 GEMM.
  const bool cpu = backend.kind() == BackendKind::cpu;
  const GemmRate f32 = best_rate(rates, cpu ? "sgemm" : "backend sgemm");
  const Limits limits{f32, cpu ? best_rate(rates, "dgemm") : f32, best_rate(rates, "dgemm")};
  // These rows are limits, not phases: measure_gemm_rates checks an entry of each product against
  // an f64 dot product and throws on a wrong one, so a row printed here passed its check.
  for (const auto& r : rates) phases.push_back({rate_name(r), "GFLOP/s", r.gflops, 0, "", {}, 0});
  return limits;
}

// What every phase reads.
struct Bench {
  const BenchSettings& s;
  Backend& backend;
  const Model& model;
  const std::vector<std::uint32_t>& tokens;  // batch x sequence_length
  Limits limits;
  std::int64_t tokens_per_pass() const { return s.batch * s.sequence_length; }
  int runs() const { return s.repeat + 1; }  // time_runs' warm-up and the timed runs
};

// ---- The f64 reference forward pass: naive loops written from the Hugging Face Llama
// definition, sharing no code with forward.cpp or the backends.

// y = x W^T + bias for P rows x, W [N, K] as Hugging Face stores it.
Rows ref_linear(const Rows& x, std::int64_t P, const Matrix& W, const Vector& bias = Vector()) {
  const std::int64_t N = W.rows(), K = W.cols();
  Rows y(static_cast<std::size_t>(P * N));
  for (std::int64_t o = 0; o < N; ++o) {
    const float* w = W.data() + o * K;
    for (std::int64_t p = 0; p < P; ++p) {
      const double* xp = x.data() + p * K;
      double acc[4] = {0, 0, 0, 0};  // four partial sums: four dependency chains, no less f64
      std::int64_t k = 0;
      for (; k + 4 <= K; k += 4)
        for (int u = 0; u < 4; ++u) acc[u] += static_cast<double>(w[k + u]) * xp[k + u];
      for (; k < K; ++k) acc[0] += static_cast<double>(w[k]) * xp[k];
      y[p * N + o] = acc[0] + acc[1] + acc[2] + acc[3] + (bias.size() ? static_cast<double>(bias(o)) : 0.0);
    }
  }
  return y;
}

Rows ref_rms_norm(const Rows& x, std::int64_t P, const Vector& w, double eps) {
  const std::int64_t D = w.size();
  Rows y(x.size());
  for (std::int64_t p = 0; p < P; ++p) {
    double squares = 0;
    for (std::int64_t d = 0; d < D; ++d) squares += x[p * D + d] * x[p * D + d];
    const double inv = 1.0 / std::sqrt(squares / static_cast<double>(D) + eps);
    for (std::int64_t d = 0; d < D; ++d) y[p * D + d] = x[p * D + d] * inv * static_cast<double>(w(d));
  }
  return y;
}

// Rotary inverse frequencies theta^(-2i/hd), with Llama 3.1's scaling (transformers'
// _compute_llama3_parameters) where the config asks for it.
std::vector<double> ref_inv_freq(const ModelConfig& c) {
  const RopeScaling& r = c.rope_scaling;
  const double old_len = static_cast<double>(r.original_max_position_embeddings);
  std::vector<double> inv(static_cast<std::size_t>(c.head_dim / 2));
  for (std::size_t i = 0; i < inv.size(); ++i) {
    const double f = std::pow(c.rope_theta, -2.0 * static_cast<double>(i) / static_cast<double>(c.head_dim));
    const double wavelen = 2 * std::numbers::pi / f, smooth = (old_len / wavelen - r.low_freq_factor) /
                                                              (r.high_freq_factor - r.low_freq_factor);
    if (!r.llama3 || wavelen < old_len / r.high_freq_factor) inv[i] = f;
    else if (wavelen > old_len / r.low_freq_factor) inv[i] = f / r.factor;
    else inv[i] = (1 - smooth) * f / r.factor + smooth * f;
  }
  return inv;
}

// rotate_half rotary embedding in place on P rows of `heads` heads, row p at position p.
void ref_rope(Rows& z, std::int64_t P, std::int64_t heads, std::int64_t hd, const std::vector<double>& inv_freq) {
  const std::int64_t half = hd / 2;
  for (std::int64_t p = 0; p < P; ++p)
    for (std::int64_t h = 0; h < heads; ++h)
      for (std::int64_t i = 0; i < half; ++i) {
        const double angle = static_cast<double>(p) * inv_freq[i], c = std::cos(angle), s = std::sin(angle);
        double& a = z[(p * heads + h) * hd + i];
        double& b = z[(p * heads + h) * hd + i + half];
        const double a0 = a, b0 = b;
        a = a0 * c - b0 * s;
        b = b0 * c + a0 * s;
      }
}

// Causal softmax(q k^T / sqrt(hd)) v per head over P positions; head h reads KV head h / (H / Hkv).
Rows ref_attention(const Rows& q, const Rows& k, const Rows& v, std::int64_t P, const ModelConfig& c) {
  const std::int64_t H = c.num_heads, Hkv = c.num_kv_heads, hd = c.head_dim, group = H / Hkv;
  Rows out(static_cast<std::size_t>(P * H * hd), 0.0), score(static_cast<std::size_t>(P));
  for (std::int64_t p = 0; p < P; ++p)
    for (std::int64_t h = 0; h < H; ++h) {
      const double* qp = q.data() + (p * H + h) * hd;
      const std::int64_t kv = h / group;
      double top = -std::numeric_limits<double>::infinity(), sum = 0;
      for (std::int64_t j = 0; j <= p; ++j) {
        const double* kj = k.data() + (j * Hkv + kv) * hd;
        double dot = 0;
        for (std::int64_t d = 0; d < hd; ++d) dot += qp[d] * kj[d];
        score[j] = dot / std::sqrt(static_cast<double>(hd));
        top = std::max(top, score[j]);
      }
      for (std::int64_t j = 0; j <= p; ++j) sum += score[j] = std::exp(score[j] - top);
      for (std::int64_t j = 0; j <= p; ++j)
        for (std::int64_t d = 0; d < hd; ++d) out[(p * H + h) * hd + d] += score[j] / sum * v[(j * Hkv + kv) * hd + d];
    }
  return out;
}

// One layer of the reference on P positions: x += attention, then x += MLP; the MLP input is
// appended to `mlp_input`.
void ref_layer(const Model& m, std::int64_t l, Rows& x, std::int64_t P, Rows& mlp_input) {
  const ModelConfig& c = m.config;
  const LayerWeights& w = m.shared.layers[l];
  const AttentionWeights& a = w.attention;
  const Rows h = ref_rms_norm(x, P, w.input_norm, c.rms_norm_eps);
  Rows q = ref_linear(h, P, a.q, a.q_bias), k = ref_linear(h, P, a.k, a.k_bias);
  if (c.qk_norm) {  // each head's rows of hd
    q = ref_rms_norm(q, P * c.num_heads, a.q_norm, c.rms_norm_eps);
    k = ref_rms_norm(k, P * c.num_kv_heads, a.k_norm, c.rms_norm_eps);
  }
  const Rows v = ref_linear(h, P, a.v, a.v_bias);
  const std::vector<double> inv_freq = ref_inv_freq(c);
  ref_rope(q, P, c.num_heads, c.head_dim, inv_freq);
  ref_rope(k, P, c.num_kv_heads, c.head_dim, inv_freq);
  const Rows o = ref_linear(ref_attention(q, k, v, P, c), P, a.o, a.o_bias);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] += o[i];
  const Rows h2 = ref_rms_norm(x, P, w.post_attention_norm, c.rms_norm_eps);
  mlp_input.insert(mlp_input.end(), h2.begin(), h2.end());
  const MlpWeights& e = m.experts[l][0];  // the dense model's MLP (the calibration's forced expert 0)
  Rows gate = ref_linear(h2, P, e.gate);
  const Rows up = ref_linear(h2, P, e.up);
  for (std::size_t i = 0; i < gate.size(); ++i) gate[i] = gate[i] / (1 + std::exp(-gate[i])) * up[i];
  const Rows down = ref_linear(gate, P, e.down);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] += down[i];
}

// The reference rows: the first `prefix` positions of a few sequences. Causal attention makes a
// later position cost its whole prefix, so the sample is prefixes; two sequences (the first and
// the last) catch a sequence read at the wrong offset.
struct Reference {
  std::vector<std::int64_t> rows;  // token rows b * S + s, ascending
  std::vector<Rows> mlp_inputs;    // [L]: rows x D
  Rows logits;                     // rows x V
};

// The reference's prefix: T / 128 positions per sequence, at least 8 (at most S): 16 rows for
// the presets' 4 x 256 tokens. At ~20x the cost per multiply-add of the backend's f32 GEMMs, that
// is 15-30% of one forward pass (measured), ~5% of the two phases' warm-up and timed runs.
Reference reference_forward(const Model& m, const std::vector<std::uint32_t>& tokens, std::int64_t B, std::int64_t S) {
  const ModelConfig& c = m.config;
  const std::int64_t P = std::min(S, std::max<std::int64_t>(8, B * S / 128)), D = c.hidden_size;
  Reference ref;
  ref.mlp_inputs.resize(static_cast<std::size_t>(c.num_layers));
  for (const std::int64_t b : B > 1 ? std::vector<std::int64_t>{0, B - 1} : std::vector<std::int64_t>{0}) {
    Rows x(static_cast<std::size_t>(P * D));
    for (std::int64_t p = 0; p < P; ++p) {
      ref.rows.push_back(b * S + p);
      for (std::int64_t d = 0; d < D; ++d) x[p * D + d] = static_cast<double>(m.shared.embed(tokens[b * S + p], d));
    }
    for (std::int64_t l = 0; l < c.num_layers; ++l) ref_layer(m, l, x, P, ref.mlp_inputs[l]);
    const Rows logits = ref_linear(ref_rms_norm(x, P, m.shared.norm, c.rms_norm_eps), P, m.shared.output_embedding());
    ref.logits.insert(ref.logits.end(), logits.begin(), logits.end());
  }
  return ref;
}

// f32 against f64, relative to each reference row's RMS: a GEMM's rounding is ~sqrt(K) 2^-24
// of its output's scale (< 1e-5 for K <= 14336), adding up over the layers to ~2e-4 for 32 of
// them (measured here: 1.4e-6 for the tiny preset, 4e-6 for d1024), while a real fault (a wrong
// row, head, position, sequence or weight) moves entries by a sizeable part of the row's scale.
constexpr double kForwardTolerance = 1e-3;

// Elements of `got` (rows x width) farther from `ref` than kForwardTolerance x their reference
// row's RMS; NaN and infinities count.
long count_far(const float* got, const double* ref, std::int64_t rows, std::int64_t width) {
  long wrong = 0;
  for (std::int64_t r = 0; r < rows; ++r) {
    double squares = 0;
    for (std::int64_t i = 0; i < width; ++i) squares += ref[r * width + i] * ref[r * width + i];
    const double tolerance = kForwardTolerance * std::sqrt(squares / static_cast<double>(width));
    for (std::int64_t i = 0; i < width; ++i)
      wrong += !(std::abs(static_cast<double>(got[r * width + i]) - ref[r * width + i]) <= tolerance);
  }
  return wrong;
}

// ---- Statistics checks: sampled rows of A against f64 sums of the products of [x 1].

// `count` row indices spread over [0, n), first and last (the sums and the count) among them.
std::vector<std::int64_t> spread_indices(std::int64_t n, std::int64_t count) {
  count = std::min(count, n);
  std::vector<std::int64_t> indices;
  for (std::int64_t k = 0; k < count; ++k) indices.push_back(count == 1 ? n - 1 : k * (n - 1) / (count - 1));
  return indices;
}

// Sampled rows of A and their f64 reference, for z = [x 1]: sums[k][j] = sum_t z_ti z_tj for
// i = indices[k], and squares[j] = sum_t z_tj^2.
struct StatsSample {
  std::vector<std::int64_t> indices;
  Rows sums, squares;  // indices.size() x n, n
  StatsSample(std::int64_t n, std::int64_t count)
      : indices(spread_indices(n, count)), sums(indices.size() * static_cast<std::size_t>(n)),
        squares(static_cast<std::size_t>(n)) {}
};

// Adds the products of x's T rows (host, T x D) to the sample's sums.
void add_products(const float* x, std::int64_t T, std::int64_t D, StatsSample& sample) {
  const std::int64_t n = D + 1;
  for (std::int64_t t = 0; t < T; ++t) {
    const float* row = x + t * D;
    for (std::int64_t j = 0; j < D; ++j) sample.squares[j] += static_cast<double>(row[j]) * row[j];
    sample.squares[D] += 1;
    for (std::size_t k = 0; k < sample.indices.size(); ++k) {
      const std::int64_t i = sample.indices[k];
      const double xi = i == D ? 1.0 : static_cast<double>(row[i]);
      double* sum = sample.sums.data() + k * n;
      for (std::int64_t j = 0; j < D; ++j) sum[j] += xi * static_cast<double>(row[j]);  // exact products
      sum[D] += xi;
    }
  }
}

// Elements of the sampled rows of A (host, n x n, upper triangle: A(i, j) read at (min, max))
// that differ from `runs` x the sums by more than f64 summation allows: `terms` exact products
// (f32 x f32 fits in f64) summed in any order are off by at most terms x 2^-53 x the sum of their
// magnitudes, which is at most sqrt(squares_i squares_j) (Cauchy-Schwarz), on the backend's side
// and on the reference's; 4x that (a count of ones is then exact).
long check_sampled_rows(const std::vector<double>& A, std::int64_t n, const StatsSample& sample, int runs,
                        std::int64_t terms) {
  const double bound = 4.0 * static_cast<double>(terms) * std::ldexp(1.0, -53);
  long wrong = 0;
  for (std::size_t k = 0; k < sample.indices.size(); ++k)
    for (std::int64_t j = 0; j < n; ++j) {
      const std::int64_t i = sample.indices[k], lo = std::min(i, j), hi = std::max(i, j);
      const double expected = runs * sample.sums[k * n + j];
      const double magnitude = runs * std::sqrt(sample.squares[i] * sample.squares[j]);
      wrong += !(std::abs(A[lo * n + hi] - expected) <= bound * magnitude);
    }
  return wrong;
}

// ---- The phases.

// The forward pass with logits. Checked: the reference rows' V logits each (last timed run), and
// every other logit for being finite.
void forward_phase(const Bench& b, Forward& forward, const Reference& ref, std::vector<PhaseResult>& phases) {
  const ModelConfig& c = b.s.config;
  const std::int64_t V = c.vocab_size, T = b.tokens_per_pass();
  std::vector<float> logits;
  const auto seconds = time_runs(b.s.repeat, [&] { logits = forward.run(b.tokens, b.s.batch, b.s.sequence_length); });
  long wrong = 0;
  std::size_t next = 0;  // the next reference row
  for (std::int64_t t = 0; t < T; ++t) {
    const float* row = logits.data() + t * V;
    if (next < ref.rows.size() && ref.rows[next] == t)
      wrong += count_far(row, ref.logits.data() + next++ * V, 1, V);
    else
      wrong += std::count_if(row, row + V, [](float x) { return !std::isfinite(x); });
  }
  const double t = median(seconds);
  phases.push_back({"forward", "GFLOP/s", Forward::flops(c, b.s.batch, b.s.sequence_length) / t / 1e9,
                    b.limits.f32.gflops, rate_name(b.limits.f32), seconds, wrong});
  phases.push_back({"forward", "tokens/s", static_cast<double>(T) / t, 0, "", seconds, wrong});
}

// The warm-up run's MLP inputs of layer l (x, backend memory): their reference rows compared,
// their products added to the layer's sample. Returns the wrong elements.
long check_mlp_inputs(const Bench& b, std::int64_t l, const float* x, const Reference& ref, StatsSample& sample,
                      std::vector<float>& host) {
  const std::int64_t D = b.s.config.hidden_size;
  b.backend.download(x, host);
  long wrong = 0;
  for (std::size_t r = 0; r < ref.rows.size(); ++r)
    wrong += count_far(host.data() + ref.rows[r] * D, ref.mlp_inputs[l].data() + r * D, 1, D);
  add_products(host.data(), b.tokens_per_pass(), D, sample);
  return wrong;
}

// The calibration pass: forward to the last MLP input + the statistics of every layer. Checked:
// the MLP inputs' reference rows and 8 sampled rows of every layer's A, against f64 sums of the
// warm-up's MLP inputs (the pass is deterministic: every run adds the same products).
void calibration_phase(const Bench& b, Forward& forward, const Reference& ref, std::vector<PhaseResult>& phases) {
  const ModelConfig& c = b.s.config;
  const std::int64_t D = c.hidden_size, n = D + 1, T = b.tokens_per_pass();
  std::vector<Buffer64> A;
  std::vector<StatsSample> samples;
  for (std::int64_t l = 0; l < c.num_layers; ++l) {
    A.push_back(b.backend.alloc64(static_cast<std::size_t>(n * n)));
    samples.emplace_back(n, 8);
  }
  std::vector<float> host(static_cast<std::size_t>(T * D));
  long wrong = 0;
  bool warm_up = true;
  ForwardOptions options;
  options.forced_expert = 0;
  options.logits = false;
  options.on_mlp_input = [&](std::int64_t l, const float* x, std::int64_t rows) {
    b.backend.stats_accumulate(x, rows, D, A[l].data());
    if (warm_up) wrong += check_mlp_inputs(b, l, x, ref, samples[l], host);  // untimed
  };
  const auto seconds = time_runs(b.s.repeat, [&] {
    forward.run(b.tokens, b.s.batch, b.s.sequence_length, options);
    b.backend.synchronize();
    warm_up = false;
  });
  std::vector<double> matrix(static_cast<std::size_t>(n * n));
  for (std::int64_t l = 0; l < c.num_layers; ++l) {
    b.backend.download(A[l].data(), matrix);
    wrong += check_sampled_rows(matrix, n, samples[l], b.runs(), T * b.runs());
  }
  const double t = median(seconds);
  const double flops = calibration_flops(c, b.s.batch, b.s.sequence_length) +
                       static_cast<double>(c.num_layers) * static_cast<double>(T) * static_cast<double>(n * (n + 1));
  phases.push_back({"forward+statistics", "GFLOP/s", flops / t / 1e9, b.limits.f32.gflops, rate_name(b.limits.f32),
                    seconds, wrong});
  phases.push_back({"forward+statistics", "tokens/s", static_cast<double>(T) / t, 0, "", seconds, wrong});
}

// The statistics update alone: A += [x 1]^T [x 1] in f64. Checked: 8 rows of A spread over it
// (a full f64 reference would cost more than the phase), against f64 sums of x's products.
void statistics_phase(const Bench& b, std::vector<PhaseResult>& phases) {
  const std::int64_t D = b.s.config.hidden_size, n = D + 1, T = b.tokens_per_pass();
  std::vector<float> x(static_cast<std::size_t>(T * D));
  std::mt19937_64 rng(9);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (auto& v : x) v = u(rng);
  Buffer64 A = b.backend.alloc64(static_cast<std::size_t>(n * n));
  const Buffer xs = b.backend.upload(x);
  const auto seconds = time_runs(b.s.repeat, [&] {
    b.backend.stats_accumulate(xs.data(), T, D, A.data());
    b.backend.synchronize();
  });
  std::vector<double> host(static_cast<std::size_t>(n * n));
  b.backend.download(A.data(), host);
  StatsSample sample(n, 8);
  add_products(x.data(), T, D, sample);
  const long wrong = check_sampled_rows(host, n, sample, b.runs(), T * b.runs());
  const double flops = static_cast<double>(T) * static_cast<double>(n * (n + 1));  // 2 per multiply-add
  phases.push_back({"statistics (f64)", "GFLOP/s", flops / median(seconds) / 1e9, b.limits.stats.gflops,
                    rate_name(b.limits.stats), seconds, wrong});
}

// The reduction's input: small integers, so that every sum is exact in any order, and different
// in every element, layer and rank, so that a misplaced one shows: rank r's entry (l, i, j),
// i <= j, is values(r)[residue], residue = (5 l + 7 i + 13 j) mod 17.
std::array<double, 17> reduce_values(std::int64_t rank) {
  std::array<double, 17> values;
  for (std::int64_t residue = 0; residue < 17; ++residue)
    values[residue] = static_cast<double>((residue + 3 * rank) % 17) - 8.0;
  return values;
}

// fn(j, residue of (l, min(i, j), max(i, j))) for j = 0..n-1, incrementally: no division per element.
template <class Fn>
void for_each_residue(std::int64_t l, std::int64_t i, std::int64_t n, Fn&& fn) {
  std::int64_t residue = (5 * l + 13 * i) % 17;  // j = 0
  for (std::int64_t j = 0; j < n; ++j) {
    if (j == i) residue = (5 * l + 20 * i) % 17;
    fn(j, residue);
    residue += j < i ? 7 : 13;
    if (residue >= 17) residue -= 17;
  }
}

// This rank's statistics for the reduction: its values above the diagonal, NaN below it (the
// reduction reads the upper triangle only; rank 0's lower one is then its mirror).
DomainStatistics reduce_input(std::int64_t layers, std::int64_t n) {
  const std::array<double, 17> values = reduce_values(mpi_rank());
  DomainStatistics domain;
  domain.tokens = mpi_rank() + 1;
  for (std::int64_t l = 0; l < layers; ++l) {
    MatrixXdRow& A = domain.A.emplace_back(n, n);
    for (std::int64_t i = 0; i < n; ++i)
      for_each_residue(l, i, n, [&](std::int64_t j, std::int64_t residue) {
        A(i, j) = j >= i ? values[residue] : std::numeric_limits<double>::quiet_NaN();
      });
  }
  return domain;
}

// Rank 0's elements (both triangles, and the token count) that differ from its own value plus
// `runs` times the other ranks' sum, exactly (integers far below 2^53).
long check_reduced(const DomainStatistics& domain, int runs) {
  std::array<double, 17> expected = reduce_values(0);
  for (std::int64_t r = 1; r < mpi_size(); ++r) {
    const std::array<double, 17> values = reduce_values(r);
    for (std::size_t k = 0; k < values.size(); ++k) expected[k] += runs * values[k];
  }
  long wrong = 0;
  for (std::size_t l = 0; l < domain.A.size(); ++l) {
    const MatrixXdRow& A = domain.A[l];
    for (Eigen::Index i = 0; i < A.rows(); ++i)
      for_each_residue(static_cast<std::int64_t>(l), i, A.cols(), [&](std::int64_t j, std::int64_t residue) {
        wrong += A(i, j) != expected[residue];
      });
  }
  double tokens = 1;
  for (std::int64_t r = 1; r < mpi_size(); ++r) tokens += runs * static_cast<double>(r + 1);
  return wrong + (static_cast<double>(domain.tokens) != tokens);
}

// The limits' buffer: rank r holds ((e mod 13) + 2 r) x 2^-k at element e, k such that the
// `calls` in-place sums over all ranks (x ranks each) stay near 1 (powers of two are exact).
void fill_plain(std::vector<double>& plain, int calls) {
  const int k = std::min(1000, static_cast<int>((calls - 1) * std::log2(static_cast<double>(mpi_size()))));
  for (std::size_t e = 0; e < plain.size(); ++e)
    plain[e] = std::ldexp(static_cast<double>(e % 13) + 2.0 * mpi_rank(), -k);
}

// Elements of the buffer after `calls` in-place sums over all ranks farther from the f64
// reference ranks^(calls - 1) x (the sum over ranks) than the rounding of calls x ranks additions
// (4 calls ranks 2^-53, relative); exact in practice (integers x 2^-k below 2^53).
long check_allreduced(const std::vector<double>& plain, int calls) {
  const std::int64_t ranks = mpi_size();
  const int k = std::min(1000, static_cast<int>((calls - 1) * std::log2(static_cast<double>(ranks))));
  double expected[13];
  for (std::int64_t m = 0; m < 13; ++m) {
    expected[m] = 0;
    for (std::int64_t r = 0; r < ranks; ++r) expected[m] += std::ldexp(static_cast<double>(m + 2 * r), -k);
    for (int c = 1; c < calls; ++c) expected[m] *= static_cast<double>(ranks);
  }
  const double bound = 4.0 * calls * static_cast<double>(ranks) * std::ldexp(1.0, -53);
  long wrong = 0;
  for (std::size_t e = 0, m = 0; e < plain.size(); ++e, m = m == 12 ? 0 : m + 1)  // m = e mod 13
    wrong += !(std::abs(plain[e] - expected[m]) <= bound * expected[m]);
  return wrong;
}

// The reduction's rows: its rate against the one-call MPI_Allreduce, and (more than one rank)
// against the same bytes in the reduction's segments. `seconds`: reduce, one call, segmented.
void add_reduce_rows(std::vector<PhaseResult>& phases, double bytes, const std::vector<double> (&seconds)[3],
                     const long (&wrong)[2]) {
  const int ranks = mpi_size();
  const double algbw = bytes / median(seconds[0]) / 1e9;
  const auto allreduce_busbw = [&](const std::vector<double>& t) {
    // nccl-tests: reduce's bus bandwidth is its algorithm bandwidth; allreduce's is 2 (n-1)/n of it.
    return bytes / median(t) / 1e9 * 2.0 * (ranks - 1) / std::max(ranks, 1);
  };
  const std::string segment_name =
      "MPI_Allreduce, same bytes in " + std::to_string(mpi_reduce_segment_elements() * 8 / 1024) + " KiB calls";
  // On one rank there is nothing to communicate: no limit to compare with.
  for (const bool segmented : {false, true}) {
    if (segmented && ranks == 1) break;
    const std::vector<double>& limit = seconds[segmented ? 2 : 1];
    PhaseResult r{segmented ? "reduce, vs segmented" : "reduce (packed, to rank 0)", "GB/s", algbw,
                  ranks > 1 ? bytes / median(limit) / 1e9 : 0.0,
                  ranks > 1 ? (segmented ? segment_name : "MPI_Allreduce, same bytes in one call")
                            : "(one rank: nothing to reduce)",
                  seconds[0], wrong[segmented ? 1 : 0]};
    r.bytes = bytes;
    r.busbw = algbw;
    r.limit_busbw = ranks > 1 ? allreduce_busbw(limit) : 0.0;
    phases.push_back(r);
  }
}

// The reduction of one domain's statistics to rank 0 vs a plain MPI_Allreduce of the same bytes.
// Checked: every element of rank 0's result, both triangles (the first row's #wrong, with the
// one-call MPI_Allreduce's result), and the segmented MPI_Allreduce's result (the second row's;
// the first's on one rank, which prints no second row).
void reduce_phase(const Bench& b, std::vector<PhaseResult>& phases) {
  const ModelConfig& c = b.s.config;
  const std::int64_t n = c.hidden_size + 1;
  DomainStatistics domain = reduce_input(c.num_layers, n);
  const double bytes = 8.0 * static_cast<double>(c.num_layers) * static_cast<double>(n * (n + 1) / 2);
  CalibrationTiming unused;
  const auto seconds = time_runs(b.s.repeat, [&] { reduce_domain(domain, unused); });
  long wrong[2] = {mpi_rank() == 0 ? check_reduced(domain, b.runs()) : 0, 0};  // the result is rank 0's
  // The limit as nccl-tests would take it, one MPI_Allreduce of all the bytes; and the same bytes
  // in the segments the reduction uses, which this MPI may run faster.
  std::vector<double> plain(static_cast<std::size_t>(bytes / 8));
  fill_plain(plain, b.runs());
  const auto plain_seconds = time_runs(b.s.repeat, [&] { allreduce_sum(plain, mpi_chunk_elements()); });
  wrong[0] += check_allreduced(plain, b.runs());
  fill_plain(plain, b.runs());
  const auto segmented_seconds = time_runs(b.s.repeat, [&] { allreduce_sum(plain, mpi_reduce_segment_elements()); });
  wrong[mpi_size() > 1 ? 1 : 0] += check_allreduced(plain, b.runs());
  add_reduce_rows(phases, bytes, {seconds, plain_seconds, segmented_seconds}, wrong);
}

// Expert e's solution as ridge_solve returns it, w_e = [weight_e bias_e] (the weight row of unit
// norm), is the exact one over its norm: M w_e = B_e / norm, M = A + lambda I. Counts the entries
// of M w_e - alpha B_e (alpha fitted, f64) beyond 1e-9 x (sum_j |M_ij w_j| + |alpha B_ie|), and
// weight rows whose norm is not 1 within 1e-9. The Cholesky solve's backward error is
// gamma_{3n+1} |L| |L^T| (~1.4e-12 relative for n = 4097; |L| |L^T| may exceed |M| a little),
// while a wrong element leaves a residual of its own size. O(n^2) per expert, not the solve's n^3.
long check_solution(const MatrixXdRow& A, const Eigen::MatrixXd& B, double lambda, const RouterSolution& r) {
  const Eigen::Index n = A.rows(), D = n - 1;
  long wrong = 0;
  Rows w(static_cast<std::size_t>(n)), product(w.size()), magnitude(w.size());
  for (Eigen::Index e = 0; e < B.cols(); ++e) {
    double norm = 0, bb = 0, bp = 0;
    for (Eigen::Index d = 0; d < D; ++d) norm += r.weight(e, d) * r.weight(e, d);
    for (Eigen::Index d = 0; d < D; ++d) w[d] = r.weight(e, d);
    w[D] = r.bias(e);
    wrong += !(std::abs(std::sqrt(norm) - 1) <= 1e-9);
    for (Eigen::Index i = 0; i < n; ++i) {
      double sum[4] = {lambda * w[i], 0, 0, 0}, abs_sum[4] = {std::abs(lambda * w[i]), 0, 0, 0};
      for (Eigen::Index j = 0; j < n; ++j) {  // four partial sums: four dependency chains
        sum[j % 4] += A(i, j) * w[j];
        abs_sum[j % 4] += std::abs(A(i, j) * w[j]);
      }
      product[i] = sum[0] + sum[1] + sum[2] + sum[3];
      magnitude[i] = abs_sum[0] + abs_sum[1] + abs_sum[2] + abs_sum[3];
      bb += B(i, e) * B(i, e);
      bp += B(i, e) * product[i];
    }
    const double alpha = bp / bb;  // 1 / the norm
    for (Eigen::Index i = 0; i < n; ++i)
      wrong += !(std::abs(product[i] - alpha * B(i, e)) <= 1e-9 * (magnitude[i] + std::abs(alpha * B(i, e))));
  }
  return wrong;
}

// The solve of one layer (Cholesky, f64) vs the f64 GEMM rate, counted as n^3 / 3. Checked: the
// last run's solution, all of it, by its residual (check_solution).
void solve_phase(const Bench& b, std::vector<PhaseResult>& phases) {
  const std::int64_t n = b.s.config.hidden_size + 1;
  const MatrixXdRow R = MatrixXdRow::Random(n, n);
  MatrixXdRow A(n, n);  // R^T R + n I: symmetric positive definite
  // BLAS's product: Eigen's own here draws GCC 12's false -Wmaybe-uninitialized (AVX-512 kernel).
  const int ni = static_cast<int>(n);
  cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, ni, ni, ni, 1.0, R.data(), ni, R.data(), ni, 0.0, A.data(), ni);
  A.diagonal().array() += static_cast<double>(n);
  const Eigen::MatrixXd B = Eigen::MatrixXd::Random(n, 4);
  const double lambda = 1e-2;
  RouterSolution solution;
  const auto seconds = time_runs(b.s.repeat, [&] { solution = ridge_solve(A, B, lambda, true, 0); });
  const long wrong = check_solution(A, B, lambda, solution);
  const double flops = std::pow(static_cast<double>(n), 3) / 3.0;
  phases.push_back({"solve (one layer)", "GFLOP/s", flops / median(seconds) / 1e9, b.limits.f64.gflops,
                    rate_name(b.limits.f64), seconds, wrong});
}

// Elements of `stored` (bf16 bytes, little-endian) that are not `values` rounded to bf16:
// rounding to nearest moves a value by at most 2^-8 of it (bf16's 8 significant bits), or by
// 2^-134 among the subnormals.
long count_off_bf16(const std::vector<std::byte>& stored, const float* values, std::size_t n) {
  long wrong = 0;
  for (std::size_t i = 0; i < n; ++i) {
    std::uint16_t half;
    std::memcpy(&half, stored.data() + 2 * i, sizeof half);
    const std::uint32_t bits = static_cast<std::uint32_t>(half) << 16;  // bf16: f32's upper half
    float read;
    std::memcpy(&read, &bits, sizeof read);
    const double v = values[i];
    wrong += !(std::abs(static_cast<double>(read) - v) <= 0x1p-8 * std::abs(v) + 0x1p-134);
  }
  return wrong;
}

// Reads every shared tensor back through dir/moe.h5 (its links to the shards) and counts the
// elements that are not the model's value rounded to bf16. A tensor stored with another dtype or
// shape, or not readable, counts whole.
long check_written(const fs::path& dir, const ModelConfig& c, const SharedWeights& shared) {
  // Shards stay open from one dataset to the next (HDF5 opens an external link's file anew each time).
  const H5Id access(h5_check(H5Pcreate(H5P_FILE_ACCESS), "H5Pcreate"));
  h5_check(H5Pset_elink_file_cache_size(access.get(), 16), "H5Pset_elink_file_cache_size");
  const fs::path index = dir / "moe.h5";
  const H5Id file(h5_check(H5Fopen(index.c_str(), H5F_ACC_RDONLY, access.get()), index.string() + ": cannot open"));
  long wrong = 0;
  for_each_shared_tensor(c, shared, [&](const std::string&, const std::string& path,
                                        const std::vector<std::int64_t>& shape, const auto& values) {
    const auto n = static_cast<std::size_t>(values.size());
    try {
      const h5::DatasetInfo info = h5::dataset_info(file.get(), path);
      const std::vector<std::byte> stored = h5::read_raw(file.get(), path);
      if (info.dtype == DType::BF16 && info.shape == shape && stored.size() == 2 * n) {
        wrong += count_off_bf16(stored, values.data(), n);
        return;
      }
    } catch (const Error&) {  // counted below
    }
    wrong += static_cast<long>(n);
  });
  return wrong;
}

// The shared weights as bf16 tensors for write_moe, encoded once into `encoded` (both the HDF5
// and the plain write write the same bytes). Returns their size in bytes.
double encode_shared(const ModelConfig& c, const SharedWeights& shared, std::deque<std::vector<std::byte>>& encoded,
                     std::vector<MoeTensor>& tensors) {
  double bytes = 0;
  for_each_shared_tensor(c, shared, [&](const std::string&, const std::string& path,
                                        const std::vector<std::int64_t>& shape, const auto& values) {
    encoded.push_back(encode(DType::BF16, {values.data(), static_cast<std::size_t>(values.size())}));
    const std::vector<std::byte>* data = &encoded.back();
    bytes += static_cast<double>(data->size());
    tensors.push_back({path, DType::BF16, shape, [data] { return *data; }});
  });
  return bytes;
}

// The HDF5 write of the shared weights (bf16) vs a plain write of the same bytes (rank 0).
// Checked: every element, read back from the warm-up run's files (untimed).
void hdf5_phase(const Bench& b, std::vector<PhaseResult>& phases) {
  const ModelConfig& c = b.s.config;
  std::deque<std::vector<std::byte>> encoded;
  std::vector<MoeTensor> tensors;
  const double bytes = encode_shared(c, b.model.shared, encoded, tensors);
  MoeInfo info;
  info.config = c;
  info.experts = {"synthetic"};
  int run = 0;
  long wrong = 0;
  const auto seconds = time_runs(b.s.repeat, [&] {
    const fs::path dir = b.s.scratch / ("h5-" + std::to_string(run));
    fs::create_directories(dir);
    write_moe(dir, tensors, info, 1ull << 40);
    if (run++ == 0) wrong = check_written(dir, c, b.model.shared);
    fs::remove_all(dir);
  }, /*collective=*/false);
  const auto plain = time_runs(b.s.repeat, [&] {
    const fs::path path = b.s.scratch / "plain.bin";
    {
      std::ofstream out(path, std::ios::binary);
      for (const auto& e : encoded) out.write(reinterpret_cast<const char*>(e.data()), static_cast<std::streamsize>(e.size()));
    }
    fs::remove(path);
  }, /*collective=*/false);
  phases.push_back({"HDF5 write", "MB/s", bytes / median(seconds) / 1e6, bytes / median(plain) / 1e6,
                    "plain write, same bytes", seconds, wrong});
}

}  // namespace

std::vector<PhaseResult> run_benchmark(const BenchSettings& s, Backend& backend) {
  std::vector<PhaseResult> phases;
  const Limits limits = measure_limits(s.config, backend, phases);
  const Model random = s.model ? Model{} : random_model(s.config, 42);
  const Model& model = s.model ? *s.model : random;
  const auto tokens = s.tokens.empty() ? random_tokens(static_cast<std::size_t>(s.batch * s.sequence_length),
                                                       s.config.vocab_size)
                                       : s.tokens;
  DUME_ASSERT(tokens.size() == static_cast<std::size_t>(s.batch * s.sequence_length));
  const Bench bench{s, backend, model, tokens, limits};
  Forward forward(model, backend);
  const Reference reference = reference_forward(model, tokens, s.batch, s.sequence_length);
  forward_phase(bench, forward, reference, phases);
  calibration_phase(bench, forward, reference, phases);
  statistics_phase(bench, phases);
  reduce_phase(bench, phases);
  solve_phase(bench, phases);
  if (mpi_rank() == 0) hdf5_phase(bench, phases);
  return phases;
}

void write_synthetic_experts(const ModelConfig& c, int experts, std::int64_t tokens, std::int64_t sequence_length,
                             std::int64_t batch, const fs::path& dir) {
  fs::create_directories(dir);
  std::string yaml = "# synthetic experts written by `dume bench --write-experts`\nexperts:\n";
  std::mt19937_64 rng(11);
  for (int e = 0; e < experts; ++e) {
    const std::string name = "expert" + std::to_string(e);
    write_random_checkpoint(c, 42 + static_cast<std::uint64_t>(e), DType::BF16, dir / name);
    std::vector<std::uint32_t> ids(static_cast<std::size_t>(tokens));
    for (auto& t : ids) t = static_cast<std::uint32_t>(rng() % static_cast<std::uint64_t>(c.vocab_size));
    std::ofstream(dir / (name + ".u32"), std::ios::binary)
        .write(reinterpret_cast<const char*>(ids.data()), static_cast<std::streamsize>(4 * ids.size()));
    yaml += "  - {name: " + name + ", checkpoint: " + name + ", calibration: {path: " + name + ".u32, format: uint32}}\n";
  }
  yaml += "router: {context_tokens: " + std::to_string(sequence_length) + "}\ncalibration: {sequence_length: " +
          std::to_string(sequence_length) + ", batch_sequences: " + std::to_string(batch) +
          ", checkpoint_minutes: 0}  # a timed checkpoint would add a domain's statistics to the disk needed\n"
          "output: moe\n";
  write_text_file(dir / "merge.yaml", yaml);
}

}  // namespace dume
