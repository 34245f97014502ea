// Per-op tests of the compute backends, after llama.cpp's test-backend-ops and llm.c's kernel
// checks: every op of backend.hpp, on odd shapes that cross the CPU backend's fast-path
// thresholds, against a naive float64 reference written here (plain loops, no Eigen or BLAS).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <ostream>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "backend.hpp"

namespace dume {
// gtest prints the parameter (in test lists, ctest's listing) by name rather than as bytes.
static void PrintTo(BackendKind kind, std::ostream* os) { *os << (kind == BackendKind::cpu ? "cpu" : "cuda"); }
}  // namespace dume

namespace {

using namespace dume;

std::size_t at(std::int64_t i) { return static_cast<std::size_t>(i); }

// ---- Float64 references. Row-major arrays; shapes as in backend.hpp. ----

// out (T, D) = table (V, D) row tokens[t].
std::vector<double> ref_embed(const std::vector<std::uint32_t>& tokens, const std::vector<float>& table,
                              std::int64_t D) {
  std::vector<double> out;
  for (const std::uint32_t token : tokens)
    for (std::int64_t d = 0; d < D; ++d) out.push_back(table[token * at(D) + at(d)]);
  return out;
}

// out (T, D) = x (T, D) / sqrt(mean over d of x^2 + eps) * w (D).
std::vector<double> ref_rms_norm(const std::vector<float>& x, const std::vector<float>& w, std::int64_t T,
                                 std::int64_t D, float eps) {
  std::vector<double> out(at(T * D));
  for (std::int64_t t = 0; t < T; ++t) {
    double squares = 0;
    for (std::int64_t d = 0; d < D; ++d) squares += static_cast<double>(x[at(t * D + d)]) * x[at(t * D + d)];
    const double inv = 1.0 / std::sqrt(squares / static_cast<double>(D) + static_cast<double>(eps));
    for (std::int64_t d = 0; d < D; ++d) out[at(t * D + d)] = x[at(t * D + d)] * inv * w[at(d)];
  }
  return out;
}

// xw (T, N) = x (T, K) W^T for W (N, K); bias and accumulation are added by the test.
std::vector<double> ref_matmul_wt(const std::vector<float>& x, const std::vector<float>& w, std::int64_t T,
                                  std::int64_t K, std::int64_t N) {
  std::vector<double> out(at(T * N));
  for (std::int64_t t = 0; t < T; ++t)
    for (std::int64_t n = 0; n < N; ++n) {
      double sum = 0;
      for (std::int64_t k = 0; k < K; ++k) sum += static_cast<double>(x[at(t * K + k)]) * w[at(n * K + k)];
      out[at(t * N + n)] = sum;
    }
  return out;
}

// x (B*S, heads*hd) rotated: in each head, (a, b) = (first half, second half) becomes
// (a cos - b sin, b cos + a sin) with cos, sin (S, hd/2) at the row's position s = row mod S.
std::vector<double> ref_rope(const std::vector<float>& x, std::int64_t B, std::int64_t S, std::int64_t heads,
                             std::int64_t hd, const std::vector<float>& cos, const std::vector<float>& sin) {
  const std::int64_t half = hd / 2;
  std::vector<double> out(x.begin(), x.end());
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t s = 0; s < S; ++s)
      for (std::int64_t h = 0; h < heads; ++h)
        for (std::int64_t i = 0; i < half; ++i) {
          const std::int64_t first = ((b * S + s) * heads + h) * hd + i, second = first + half;
          const double c = cos[at(s * half + i)], sn = sin[at(s * half + i)];
          out[at(first)] = x[at(first)] * c - x[at(second)] * sn;
          out[at(second)] = x[at(second)] * c + x[at(first)] * sn;
        }
  return out;
}

// out (B*S, H*hd): for sequence b, head h and position s, softmax over t <= s of
// q.k_t / sqrt(hd), weighting v_t; q (B*S, H*hd), k, v (B*S, Hkv*hd), KV head h / (H / Hkv).
std::vector<double> ref_attention(const std::vector<float>& q, const std::vector<float>& k,
                                  const std::vector<float>& v, std::int64_t B, std::int64_t S, std::int64_t H,
                                  std::int64_t Hkv, std::int64_t hd) {
  std::vector<double> out(at(B * S * H * hd)), scores(at(S));
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t h = 0; h < H; ++h) {
      const std::int64_t kvh = h / (H / Hkv);
      for (std::int64_t s = 0; s < S; ++s) {
        const float* query = &q[at((b * S + s) * H * hd + h * hd)];
        double top = -std::numeric_limits<double>::infinity();
        for (std::int64_t t = 0; t <= s; ++t) {
          const float* key = &k[at((b * S + t) * Hkv * hd + kvh * hd)];
          double dot = 0;
          for (std::int64_t d = 0; d < hd; ++d) dot += static_cast<double>(query[d]) * key[d];
          scores[at(t)] = dot * scale;
          top = std::max(top, scores[at(t)]);
        }
        double total = 0;
        for (std::int64_t t = 0; t <= s; ++t) {
          scores[at(t)] = std::exp(scores[at(t)] - top);
          total += scores[at(t)];
        }
        double* o = &out[at((b * S + s) * H * hd + h * hd)];
        for (std::int64_t t = 0; t <= s; ++t) {
          const float* value = &v[at((b * S + t) * Hkv * hd + kvh * hd)];
          for (std::int64_t d = 0; d < hd; ++d) o[d] += scores[at(t)] / total * value[d];
        }
      }
    }
  return out;
}

// out (n) = gate / (1 + exp(-gate)) * up.
std::vector<double> ref_swiglu(const std::vector<float>& gate, const std::vector<float>& up) {
  std::vector<double> out(gate.size());
  for (std::size_t i = 0; i < gate.size(); ++i) out[i] = gate[i] / (1.0 + std::exp(-static_cast<double>(gate[i]))) * up[i];
  return out;
}

// out (rows, D) = x (R, D) row rows[i].
std::vector<double> ref_gather(const std::vector<float>& x, std::int64_t D, const std::vector<std::int64_t>& rows) {
  std::vector<double> out;
  for (const std::int64_t r : rows)
    for (std::int64_t d = 0; d < D; ++d) out.push_back(x[at(r * D + d)]);
  return out;
}

// x (R, D) with x[rows[i]] += weights[i] * y[i] for y (rows, D).
std::vector<double> ref_scatter_add(const std::vector<float>& x, const std::vector<float>& y, std::int64_t D,
                                    const std::vector<std::int64_t>& rows, const std::vector<float>& weights) {
  std::vector<double> out(x.begin(), x.end());
  for (std::size_t i = 0; i < rows.size(); ++i)
    for (std::int64_t d = 0; d < D; ++d)
      out[at(rows[i] * D + d)] += static_cast<double>(weights[i]) * y[i * at(D) + at(d)];
  return out;
}

// A (n, n), n = D + 1, += [x 1]^T [x 1] for x (T, D), upper triangle (j >= i) only; with
// `magnitude` += the same sum of absolute values, the scale of a sum's rounding.
void ref_stats(const std::vector<float>& x, std::int64_t T, std::int64_t D, std::vector<double>& A,
               std::vector<double>& magnitude) {
  const std::int64_t n = D + 1;
  const auto value = [&](std::int64_t t, std::int64_t i) { return i == D ? 1.0 : static_cast<double>(x[at(t * D + i)]); };
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = i; j < n; ++j)
      for (std::int64_t t = 0; t < T; ++t) {
        const double product = value(t, i) * value(t, j);
        A[at(i * n + j)] += product;
        magnitude[at(i * n + j)] += std::abs(product);
      }
}

// ---- Comparison ----

// |got - ref| <= atol + rtol |ref|, elementwise.
struct Bound {
  double atol, rtol;
};

// The compared array's name and dimensions, for messages: "y (T=7, N=257)" and "y[3, 17]".
struct Shape {
  std::string name;
  std::vector<std::pair<const char*, std::int64_t>> dims;
};

std::string index_in(const Shape& shape, std::size_t flat) {
  std::vector<std::int64_t> index(shape.dims.size());
  auto rest = static_cast<std::int64_t>(flat);
  for (std::size_t d = shape.dims.size(); d-- > 0;) {
    index[d] = rest % shape.dims[d].second;
    rest /= shape.dims[d].second;
  }
  std::string s = shape.name + "[";
  for (std::size_t d = 0; d < index.size(); ++d) s += (d ? ", " : "") + std::to_string(index[d]);
  return s + "]";
}

// Checks every element against its bound (bound_at(i) gives element i's); on failure, one
// message: the op and case, how many elements are out, and the first and the worst of them.
template <class Got, class BoundAt>
::testing::AssertionResult within(const std::string& op, const Shape& shape, std::span<const Got> got,
                                  std::span<const double> ref, BoundAt bound_at, double& worst_ratio) {
  std::ostringstream what;
  what << op << ", " << shape.name << " (";
  for (std::size_t d = 0; d < shape.dims.size(); ++d)
    what << (d ? ", " : "") << shape.dims[d].first << "=" << shape.dims[d].second;
  what << ")";
  if (got.size() != ref.size())
    return ::testing::AssertionFailure() << what.str() << ": " << got.size() << " elements, expected " << ref.size();
  std::size_t bad = 0, first = 0, worst = 0;
  double worst_here = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const Bound bound = bound_at(i);
    const double diff = std::abs(static_cast<double>(got[i]) - ref[i]), allowed = bound.atol + bound.rtol * std::abs(ref[i]);
    // a NaN fails: an output element that the op never wrote keeps the NaN it was filled with
    const bool ok = diff <= allowed;
    const double ratio = !ok && (std::isnan(diff) || allowed == 0) ? std::numeric_limits<double>::infinity()
                         : allowed > 0                             ? diff / allowed
                                                                   : 0.0;
    if (!ok && bad++ == 0) first = i;
    if (ratio > worst_here) {
      worst_here = ratio;
      worst = i;
    }
  }
  worst_ratio = std::max(worst_ratio, worst_here);
  if (bad == 0) return ::testing::AssertionSuccess();
  const auto describe = [&](std::size_t i) {
    const Bound bound = bound_at(i);
    std::ostringstream s;
    s.precision(9);
    s << index_in(shape, i) << ": got " << static_cast<double>(got[i]) << ", ref " << ref[i] << ", |diff| "
      << std::abs(static_cast<double>(got[i]) - ref[i]) << " > " << bound.atol << " + " << bound.rtol << " |ref|";
    return s.str();
  };
  auto failure = ::testing::AssertionFailure() << what.str() << ": " << bad << " of " << got.size()
                                               << " elements out of bounds; first " << describe(first);
  if (worst != first) failure << "; worst (by |diff| / bound) " << describe(worst);
  return failure;
}

template <class Got>
::testing::AssertionResult within(const std::string& op, const Shape& shape, std::span<const Got> got,
                                  std::span<const double> ref, Bound bound, double& worst_ratio) {
  return within(op, shape, got, ref, [bound](std::size_t) { return bound; }, worst_ratio);
}

// ---- The fixture: one backend per test, CPU always, CUDA where there is a GPU. ----

class BackendOps : public ::testing::TestWithParam<BackendKind> {
 protected:
  void SetUp() override {
    if (GetParam() == BackendKind::cuda && !(cuda_built() && cuda_device_count() > 0))
      GTEST_SKIP() << (cuda_built() ? "no CUDA device visible" : "this build has no CUDA backend");
    // Two CPU threads, so that the parallel loops really split the work.
    backend = make_backend(GetParam(), 2);
  }
  void TearDown() override {
    // How close the op came to its bounds (1 = at a bound), for tightening them later.
    if (backend) RecordProperty("worst_error_over_bound", std::to_string(worst_ratio));
  }

  std::vector<float> uniform(std::int64_t n, float lo, float hi) {
    std::uniform_real_distribution<float> u(lo, hi);
    std::vector<float> v(at(n));
    for (auto& x : v) x = u(rng);
    return v;
  }
  static std::vector<float> nans(std::int64_t n) { return std::vector<float>(at(n), std::nanf("")); }

  // Read-only input; on the CPU it aliases `host`, which must outlive it.
  Buffer input(const std::vector<float>& host) { return backend->upload(host); }
  // A writable copy of `host` in the backend's memory, for in-place ops, accumulated outputs and
  // outputs filled with NaN beforehand (an element the op never writes then shows). The interface
  // has no host-to-backend copy into writable memory: a one-row gather_rows copies an uploaded
  // vector, as in test_cuda.cpp, and the copy is checked, so that a broken gather is not
  // reported as another op's error.
  Buffer writable(const std::vector<float>& host) {
    const Buffer staged = backend->upload(host);
    Buffer copy = backend->alloc(host.size());
    backend->gather_rows(staged.data(), static_cast<std::int64_t>(host.size()), std::vector<std::int64_t>{0},
                         copy.data());
    const std::vector<float> back = fetch(copy);
    const bool same = std::equal(back.begin(), back.end(), host.begin(), [](float a, float b) {
      return a == b || (std::isnan(a) && std::isnan(b));
    });
    EXPECT_TRUE(same) << "staging a writable copy (one-row gather_rows of " << host.size() << " floats) changed it";
    return copy;
  }
  std::vector<float> fetch(const Buffer& b) {
    std::vector<float> host(b.size());
    backend->download(b.data(), host);
    return host;
  }

  template <class Got, class B>
  ::testing::AssertionResult check(const std::string& op, const Shape& shape, const std::vector<Got>& got,
                                   const std::vector<double>& ref, B bound) {
    return within<Got>(op, shape, got, ref, bound, worst_ratio);
  }

  std::unique_ptr<Backend> backend;
  std::mt19937 rng{20240619};
  double worst_ratio = 0;
};

constexpr double kUlp = 1.0 / (1 << 23);  // f32's unit in the last place at 1, 2^-23

// ---- embed: a copy, exact. ----
TEST_P(BackendOps, Embed) {
  struct Case {
    std::int64_t V, D, T;
  };
  for (const Case c : {Case{1, 1, 1}, Case{50, 7, 13}, Case{1000, 64, 300}, Case{33, 300, 65}}) {
    const auto table = uniform(c.V * c.D, -1, 1);
    std::uniform_int_distribution<std::uint32_t> pick(0, static_cast<std::uint32_t>(c.V - 1));
    std::vector<std::uint32_t> tokens(at(c.T));
    for (auto& t : tokens) t = pick(rng);
    tokens.front() = static_cast<std::uint32_t>(c.V - 1);  // the last row, and repeats
    tokens.back() = tokens.front();
    const Buffer t = input(table);
    Buffer out = writable(nans(c.T * c.D));
    backend->embed(tokens, t.data(), c.D, out.data());
    EXPECT_TRUE(check("embed V=" + std::to_string(c.V), {"out", {{"T", c.T}, {"D", c.D}}}, fetch(out),
                      ref_embed(tokens, table, c.D), Bound{0, 0}));
  }
}

// ---- rms_norm: a sum of D squares in f32, then per element a few roundings. ----
TEST_P(BackendOps, RmsNorm) {
  struct Case {
    std::int64_t T, D;
    float eps, scale;  // scale 1e-3: mean(x^2) near eps, so eps's place shows
    bool in_place;
  };
  for (const Case c : {Case{1, 1, 1e-5f, 1, false}, Case{3, 7, 1e-6f, 1, true}, Case{17, 64, 1e-5f, 1e-3f, false},
                       Case{2, 255, 1e-6f, 1, false}, Case{5, 257, 1e-6f, 1e-3f, true}, Case{3, 1000, 1e-5f, 1, false},
                       Case{4, 4097, 1e-6f, 1, true}}) {
    const auto x = uniform(c.T * c.D, -c.scale, c.scale), w = uniform(c.D, -2, 2);
    // error bound: a few roundings per element, plus the f32 mean of D squares, whose relative
    // error grows about as sqrt(D) (halved by the square root); reached here: about 2 ulp
    const Bound bound{0, kUlp * (4 + std::sqrt(static_cast<double>(c.D)))};
    const Buffer weight = input(w);
    Buffer in = writable(x);
    Buffer out = c.in_place ? in : writable(nans(c.T * c.D));
    backend->rms_norm(in.data(), weight.data(), c.T, c.D, c.eps, out.data());
    EXPECT_TRUE(check(std::string("rms_norm") + (c.in_place ? " in place" : "") + " eps=" + std::to_string(c.eps),
                      {"out", {{"T", c.T}, {"D", c.D}}}, fetch(out), ref_rms_norm(x, w, c.T, c.D, c.eps), bound));
  }
}

// ---- linear: T crossing 2 * kSliceRows = 512 (row slices from there), N crossing
// kSliceColumns = 256 (column slices below), odd K; each case in the four modes. ----
TEST_P(BackendOps, Linear) {
  struct Case {
    std::int64_t T, K, N;
  };
  for (const Case c : {Case{1, 7, 1}, Case{1, 300, 257}, Case{7, 256, 255}, Case{7, 33, 513}, Case{255, 64, 256},
                       Case{256, 257, 31}, Case{257, 31, 257}, Case{511, 17, 300}, Case{512, 40, 255},
                       Case{513, 129, 257}, Case{600, 300, 70}, Case{600, 5, 513}}) {
    const auto x = uniform(c.T * c.K, -1, 1), w = uniform(c.N * c.K, -1, 1), bias = uniform(c.N, -1, 1),
               y0 = uniform(c.T * c.N, -1, 1);
    const std::vector<double> xw = ref_matmul_wt(x, w, c.T, c.K, c.N);
    // error bound: a length-K f32 dot product of terms up to 1 in magnitude. Summed in order
    // along K (OpenBLAS's kernels), the rounding of partial sums of about sqrt(k) / 3 adds up to
    // about 0.35 ulp * K at worst over these cases; 2 ulp * K leaves room for other orders
    const Bound bound{kUlp * (8 + 2 * static_cast<double>(c.K)), 4 * kUlp};
    const Buffer xs = input(x), ws = input(w), bs = input(bias);
    for (const bool with_bias : {false, true})
      for (const bool accumulate : {false, true}) {
        Buffer y = writable(accumulate ? y0 : nans(c.T * c.N));
        backend->linear(xs.data(), ws.data(), with_bias ? bs.data() : nullptr, c.T, c.K, c.N, y.data(), accumulate);
        std::vector<double> ref = xw;
        for (std::int64_t t = 0; t < c.T; ++t)
          for (std::int64_t n = 0; n < c.N; ++n)
            ref[at(t * c.N + n)] += (with_bias ? bias[at(n)] : 0.0) + (accumulate ? y0[at(t * c.N + n)] : 0.0);
        EXPECT_TRUE(check("linear K=" + std::to_string(c.K) + (with_bias ? " +bias" : "") + (accumulate ? " accumulate" : ""),
                          {"y", {{"T", c.T}, {"N", c.N}}}, fetch(y), ref, bound));
      }
  }
}

// ---- rope: odd B and S, several heads, hd/2 odd and even. ----
TEST_P(BackendOps, Rope) {
  struct Case {
    std::int64_t B, S, heads, hd;
  };
  for (const Case c : {Case{1, 1, 1, 2}, Case{3, 5, 2, 6}, Case{2, 7, 3, 64}, Case{1, 65, 4, 128}, Case{3, 33, 1, 80}}) {
    const std::int64_t half = c.hd / 2;
    std::vector<float> cos(at(c.S * half)), sin(cos.size());
    for (std::int64_t s = 0; s < c.S; ++s)
      for (std::int64_t i = 0; i < half; ++i) {
        const double angle =
            static_cast<double>(s) * std::pow(10000.0, -2.0 * static_cast<double>(i) / static_cast<double>(c.hd));
        cos[at(s * half + i)] = static_cast<float>(std::cos(angle));
        sin[at(s * half + i)] = static_cast<float>(std::sin(angle));
      }
    const auto x = uniform(c.B * c.S * c.heads * c.hd, -1, 1);
    // error bound: two products and a sum of terms up to 1 in magnitude (2 ulp at 1) plus the
    // result's rounding
    const Bound bound{2 * kUlp, kUlp};
    const Buffer cs = input(cos), sn = input(sin);
    Buffer xs = writable(x);
    backend->rope(xs.data(), c.B, c.S, c.heads, c.hd, cs.data(), sn.data());
    EXPECT_TRUE(check("rope B=" + std::to_string(c.B) + " S=" + std::to_string(c.S),
                      {"x", {{"B*S", c.B * c.S}, {"heads", c.heads}, {"hd", c.hd}}}, fetch(xs),
                      ref_rope(x, c.B, c.S, c.heads, c.hd, cos, sin), bound));
  }
}

// ---- attention: S crossing the CPU's kBlock = 64 query rows, grouped KV heads (H/Hkv 4/4, 4/2,
// 6/1), head dims below and above a warp's 32 lanes and not multiples of 32. ----
TEST_P(BackendOps, Attention) {
  struct Heads {
    std::int64_t H, Hkv;
  };
  for (const std::int64_t S : {1, 63, 64, 65, 130})
    for (const Heads heads : {Heads{4, 4}, Heads{4, 2}, Heads{6, 1}})
      for (const std::int64_t hd : {8, 40, 64, 128}) {
        const std::int64_t B = S % 2 ? 2 : 1, H = heads.H, Hkv = heads.Hkv;
        // q in [-3, 3]: scores with a spread of about 1, so the softmax is far from uniform
        const auto q = uniform(B * S * H * hd, -3, 3), k = uniform(B * S * Hkv * hd, -1, 1),
                   v = uniform(B * S * Hkv * hd, -1, 1);
        // error bound: a score's rounding, a length-hd dot product scaled by 1 / sqrt(hd), grows
        // as sqrt(hd); exp turns it into the weights' relative error, which the output (a
        // weighted mean of values up to 1) carries, plus its own sum over up to S keys
        const Bound bound{kUlp * (8 + 2 * std::sqrt(static_cast<double>(hd)) + 2 * std::sqrt(static_cast<double>(S))),
                          4 * kUlp};
        const Buffer qs = input(q), ks = input(k), vs = input(v);
        Buffer out = writable(nans(B * S * H * hd));
        backend->attention(qs.data(), ks.data(), vs.data(), B, S, H, Hkv, hd, out.data());
        EXPECT_TRUE(check("attention B=" + std::to_string(B) + " H=" + std::to_string(H) + " Hkv=" + std::to_string(Hkv),
                          {"out", {{"B", B}, {"S", S}, {"H", H}, {"hd", hd}}}, fetch(out),
                          ref_attention(q, k, v, B, S, H, Hkv, hd), bound));
      }
}

// Element counts around the CPU's kChunk = 2^14 (swiglu's chunks) and a CUDA block's 256.
constexpr std::int64_t kElementCounts[] = {1, 7, 255, 257, 16383, 16384, 16385, 32769, 40001};

// ---- swiglu: exp and a few roundings per element; saturating gates included. ----
TEST_P(BackendOps, Swiglu) {
  for (const std::int64_t n : kElementCounts) {
    for (const bool in_place : {false, true}) {
      auto gate = uniform(n, -8, 8);
      const auto up = uniform(n, -2, 2);
      // far into both tails: exp(-g) overflows f32 for g < -88.7 and vanishes for large g
      const float tails[] = {-100.0f, -90.0f, -30.0f, 30.0f, 90.0f, 100.0f};
      for (std::size_t i = 0; i < std::size(tails); ++i) gate[(gate.size() - 1) * i / (std::size(tails) - 1)] = tails[i];
      // error bound: exp within 2 ulp (CUDA's expf, Eigen's pexp), then a sum, a quotient and a
      // product; atol only absorbs results that underflow f32 (silu(-100) is 4e-42)
      const Bound bound{1e-30, 8 * kUlp};
      const Buffer u = input(up);
      Buffer g = writable(gate);
      Buffer out = in_place ? g : writable(nans(n));
      backend->swiglu(g.data(), u.data(), n, out.data());
      EXPECT_TRUE(check(std::string("swiglu") + (in_place ? " in place" : ""), {"out", {{"n", n}}}, fetch(out),
                        ref_swiglu(gate, up), bound));
    }
  }
}

// ---- add: one f32 rounding of the exact sum. ----
TEST_P(BackendOps, Add) {
  for (const std::int64_t n : kElementCounts) {
    const auto x = uniform(n, -1, 1), y = uniform(n, -1, 1);
    std::vector<double> ref(at(n));
    for (std::size_t i = 0; i < ref.size(); ++i) ref[i] = static_cast<double>(x[i]) + y[i];
    const Bound bound{0, kUlp / 2};  // error bound: round to nearest, half an ulp
    const Buffer ys = input(y);
    Buffer xs = writable(x);
    backend->add(xs.data(), ys.data(), n);
    EXPECT_TRUE(check("add", {"x", {{"n", n}}}, fetch(xs), ref, bound));
  }
}

// Row lists: unsorted; `repeats` allows a row more than once (gather), else all distinct.
std::vector<std::int64_t> pick_rows(std::mt19937& rng, std::int64_t R, std::int64_t count, bool repeats) {
  std::vector<std::int64_t> rows;
  if (repeats) {
    std::uniform_int_distribution<std::int64_t> pick(0, R - 1);
    for (std::int64_t i = 0; i < count; ++i) rows.push_back(pick(rng));
    rows.front() = R - 1;
    rows.back() = R - 1;
  } else {
    rows.resize(at(R));
    std::iota(rows.begin(), rows.end(), 0);
    std::shuffle(rows.begin(), rows.end(), rng);
    rows.resize(at(count));
  }
  return rows;
}

struct RowsCase {
  std::int64_t R, D, count;  // x (R, D), count rows picked
};
constexpr RowsCase kRowsCases[] = {{1, 1, 1}, {10, 1, 6}, {5, 300, 9}, {300, 7, 123}, {1000, 64, 257}, {600, 33, 600}};

// ---- gather_rows: a copy, exact; rows repeated and unsorted. ----
TEST_P(BackendOps, GatherRows) {
  for (const RowsCase c : kRowsCases) {
    const auto x = uniform(c.R * c.D, -1, 1);
    const auto rows = pick_rows(rng, c.R, c.count, /*repeats=*/true);
    const Buffer xs = input(x);
    Buffer out = writable(nans(c.count * c.D));
    backend->gather_rows(xs.data(), c.D, rows, out.data());
    EXPECT_TRUE(check("gather_rows R=" + std::to_string(c.R), {"out", {{"rows", c.count}, {"D", c.D}}}, fetch(out),
                      ref_gather(x, c.D, rows), Bound{0, 0}));
  }
}

// ---- scatter_add_rows: rows distinct and unsorted (the backends assume distinct rows, one
// expert's tokens, and add without atomics); rows not named must stay exactly as they were. ----
TEST_P(BackendOps, ScatterAddRows) {
  for (const RowsCase c : kRowsCases) {
    const std::int64_t count = std::min(c.count, c.R);
    const auto x = uniform(c.R * c.D, -1, 1), y = uniform(count * c.D, -1, 1), weights = uniform(count, -1, 1);
    const auto rows = pick_rows(rng, c.R, count, /*repeats=*/false);
    std::vector<bool> named(at(c.R));
    for (const std::int64_t r : rows) named[at(r)] = true;
    // error bound: a product and a sum (or one fused multiply-add) of terms up to 1
    const Bound touched{kUlp / 2, kUlp / 2}, untouched{0, 0};
    const Buffer ys = input(y);
    Buffer xs = writable(x);
    backend->scatter_add_rows(ys.data(), c.D, rows, weights, xs.data());
    EXPECT_TRUE(check("scatter_add_rows rows=" + std::to_string(count), {"x", {{"R", c.R}, {"D", c.D}}}, fetch(xs),
                      ref_scatter_add(x, y, c.D, rows, weights),
                      [&](std::size_t i) { return named[i / at(c.D)] ? touched : untouched; }));
  }
}

// ---- stats_accumulate: n = D + 1 crossing the CPU's kStatsBlock = 128 column blocks (n = 6,
// 128, 129, 201, 256, 257, 301), T small and large, two batches into one A. ----
TEST_P(BackendOps, StatsAccumulate) {
  struct Case {
    std::int64_t D, T1, T2;
  };
  for (const Case c : {Case{5, 1, 2}, Case{5, 700, 3}, Case{127, 2, 1}, Case{127, 513, 40}, Case{128, 1, 1},
                       Case{128, 300, 257}, Case{200, 3, 5}, Case{255, 130, 1}, Case{256, 1, 129}, Case{300, 2, 1},
                       Case{300, 520, 7}}) {
    const std::int64_t n = c.D + 1;
    const auto x1 = uniform(c.T1 * c.D, -4, 4), x2 = uniform(c.T2 * c.D, -4, 4);
    std::vector<double> ref(at(n * n)), magnitude(ref.size());
    ref_stats(x1, c.T1, c.D, ref, magnitude);
    ref_stats(x2, c.T2, c.D, ref, magnitude);
    const Buffer b1 = input(x1), b2 = input(x2);
    Buffer64 A = backend->alloc64(at(n * n));
    backend->stats_accumulate(b1.data(), c.T1, c.D, A.data());
    backend->stats_accumulate(b2.data(), c.T2, c.D, A.data());
    std::vector<double> got(at(n * n));
    backend->download(A.data(), got);
    // error bound: products of f32 values are exact in f64, so only the sums' order differs:
    // relative to the sum of absolute values (cancellation can make |A_ij| itself small).
    // Below the diagonal A stays exactly as alloc64 left it, zero.
    EXPECT_TRUE(check("stats_accumulate T=" + std::to_string(c.T1) + "+" + std::to_string(c.T2),
                      {"A", {{"D+1", n}, {"D+1", n}}}, got, ref, [&](std::size_t i) {
                        return i % at(n) >= i / at(n) ? Bound{1e-12 * magnitude[i], 1e-12} : Bound{0, 0};
                      }));
    EXPECT_EQ(got[at(n * n - 1)], static_cast<double>(c.T1 + c.T2)) << "the token count, exactly; D=" << c.D;
  }
}

std::string backend_name(const ::testing::TestParamInfo<BackendKind>& info) {
  return info.param == BackendKind::cpu ? "cpu" : "cuda";
}

// No prefix: the tests are BackendOps.<Op>/cpu and BackendOps.<Op>/cuda.
INSTANTIATE_TEST_SUITE_P(, BackendOps, ::testing::Values(BackendKind::cpu, BackendKind::cuda), backend_name);

}  // namespace
