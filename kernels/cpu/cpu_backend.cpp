// The CPU backend, the reference: GEMMs through BLAS (OpenBLAS), attention and the
// element-wise work through Eigen. One thread pool (OpenMP) does all parallel work: BLAS runs
// single-threaded on each thread's slice, since two pools spinning on two cores fight.
#include <cblas.h>
#include <omp.h>

#include <Eigen/Core>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <stdexcept>
#include <vector>

#include "backend.hpp"

namespace dume {

namespace {

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using StridedMap = Eigen::Map<const RowMatrix, 0, Eigen::OuterStride<>>;
using StridedMapMut = Eigen::Map<RowMatrix, 0, Eigen::OuterStride<>>;

// Slice sizes of linear(): large enough that packing W is a few percent of the GEMM.
constexpr std::int64_t kSliceRows = 256, kSliceColumns = 256;
// Column block of stats_accumulate's update of A.
constexpr std::int64_t kStatsBlock = 128;

int to_int(std::int64_t v) {
  if (v > std::numeric_limits<int>::max()) throw std::length_error("dimension exceeds BLAS int range");
  return static_cast<int>(v);
}

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads) {
    if (threads > 0) omp_set_num_threads(threads);
    openblas_set_num_threads(1);
  }

  std::string describe() const override {
    return "cpu: " + std::string(openblas_get_config()) + " [" + openblas_get_corename() + "], " +
           std::to_string(omp_get_max_threads()) + " threads";
  }

  BackendKind kind() const override { return BackendKind::cpu; }

  Buffer alloc(std::size_t n) override {
    // 64-byte aligned, so that a slice's alignment (and BLAS's path) never depends on malloc
    const std::size_t bytes = (std::max<std::size_t>(n, 1) * sizeof(float) + 63) / 64 * 64;
    auto* p = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (!p) throw std::bad_alloc();
    return Buffer(p, n, std::shared_ptr<void>(p, std::free));
  }
  Buffer upload(std::span<const float> host) override {
    return Buffer(const_cast<float*>(host.data()), host.size());  // kernels only read weights
  }
  void download(const float* src, std::span<float> host) override {
    if (src != host.data()) std::copy(src, src + host.size(), host.data());
  }
  void copy_in(std::span<const float> host, float* dst) override {
    if (dst != host.data()) std::copy(host.begin(), host.end(), dst);
  }
  Buffer64 alloc64(std::size_t n) override {
    auto memory = std::shared_ptr<double[]>(new double[n]());
    return Buffer64(memory.get(), n, memory);
  }
  void download(const double* src, std::span<double> host) override {
    if (src != host.data()) std::copy(src, src + host.size(), host.data());
  }
  void copy_in(std::span<const double> host, double* dst) override {
    if (dst != host.data()) std::copy(host.begin(), host.end(), dst);
  }

  void embed(std::span<const std::uint32_t> tokens, const float* table, std::int64_t D, float* out) override {
    const auto T = static_cast<std::int64_t>(tokens.size());
#pragma omp parallel for schedule(static)
    for (std::int64_t t = 0; t < T; ++t)
      std::copy(table + tokens[static_cast<std::size_t>(t)] * D, table + (tokens[static_cast<std::size_t>(t)] + 1) * D,
                out + t * D);
  }

  void rms_norm(const float* x, const float* w, std::int64_t T, std::int64_t D, float eps, float* out) override {
    const Eigen::Map<const Eigen::ArrayXf> weight(w, D);
#pragma omp parallel for schedule(static)
    for (std::int64_t t = 0; t < T; ++t) {
      const Eigen::Map<const Eigen::ArrayXf> row(x + t * D, D);
      // transformers: variance in f32, x * rsqrt(variance + eps), then * weight
      const float inv = 1.0f / std::sqrt(row.square().mean() + eps);
      Eigen::Map<Eigen::ArrayXf>(out + t * D, D) = weight * (row * inv);
    }
  }

  void linear(const float* x, const float* w, const float* bias, std::int64_t T, std::int64_t K, std::int64_t N,
              float* y, bool accumulate) override {
    if (bias) {
      if (!accumulate) {
#pragma omp parallel for schedule(static)
        for (std::int64_t t = 0; t < T; ++t) std::copy(bias, bias + N, y + t * N);
      } else {
#pragma omp parallel for schedule(static)
        for (std::int64_t t = 0; t < T; ++t)
          Eigen::Map<Eigen::ArrayXf>(y + t * N, N) += Eigen::Map<const Eigen::ArrayXf>(bias, N);
      }
    }
    const float beta = (bias || accumulate) ? 1.0f : 0.0f;
    // y is cut into fixed slices, the same whatever the thread count, and BLAS runs on each
    // slice single-threaded: OpenBLAS's result for a row depends on the call's shape, so fixed
    // slices make a sequence's activations independent of threads, batch position and ranks.
    // Slices are row blocks, or column blocks (rows of W) when there are few rows.
    const bool by_rows = T >= 2 * kSliceRows;
    const std::int64_t extent = by_rows ? T : N, slice = by_rows ? kSliceRows : kSliceColumns;
    const std::int64_t slices = (extent + slice - 1) / slice;
#pragma omp parallel for schedule(dynamic, 1)
    for (std::int64_t i = 0; i < slices; ++i) {
      const std::int64_t begin = i * slice, count = std::min(slice, extent - begin);
      if (by_rows)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, to_int(count), to_int(N), to_int(K), 1.0f, x + begin * K,
                    to_int(K), w, to_int(K), beta, y + begin * N, to_int(N));
      else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, to_int(T), to_int(count), to_int(K), 1.0f, x, to_int(K),
                    w + begin * K, to_int(K), beta, y + begin, to_int(N));
    }
  }

  void rope(float* x, std::int64_t B, std::int64_t S, std::int64_t heads, std::int64_t hd, const float* cos,
            const float* sin) override {
    const std::int64_t half = hd / 2;
#pragma omp parallel for schedule(static)
    for (std::int64_t row = 0; row < B * S; ++row) {
      const std::int64_t s = row % S;
      const float* c = cos + s * half;
      const float* sn = sin + s * half;
      for (std::int64_t h = 0; h < heads; ++h) {
        float* v = x + (row * heads + h) * hd;
        for (std::int64_t i = 0; i < half; ++i) {  // (x1, x2) -> (x1 c - x2 s, x2 c + x1 s)
          const float x1 = v[i], x2 = v[i + half];
          v[i] = x1 * c[i] - x2 * sn[i];
          v[i + half] = x2 * c[i] + x1 * sn[i];
        }
      }
    }
  }

  void attention(const float* q, const float* k, const float* v, std::int64_t B, std::int64_t S, std::int64_t H,
                 std::int64_t Hkv, std::int64_t hd, float* out) override {
    const std::int64_t group = H / Hkv, q_stride = H * hd, kv_stride = Hkv * hd;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    // Causal: a block of query rows attends to the keys up to its last row only, so the blocks
    // skip the masked upper triangle (half of both products) instead of computing and zeroing it.
    constexpr std::int64_t kBlock = 64;
#pragma omp parallel
    {
      RowMatrix scores(std::min(kBlock, S), S);  // per-thread scratch
#pragma omp for schedule(static)
      for (std::int64_t bh = 0; bh < B * H; ++bh) {
        const std::int64_t b = bh / H, h = bh % H, kvh = h / group;
        const StridedMap Q(q + b * S * q_stride + h * hd, S, hd, Eigen::OuterStride<>(q_stride));
        const StridedMap K(k + b * S * kv_stride + kvh * hd, S, hd, Eigen::OuterStride<>(kv_stride));
        const StridedMap V(v + b * S * kv_stride + kvh * hd, S, hd, Eigen::OuterStride<>(kv_stride));
        StridedMapMut O(out + b * S * q_stride + h * hd, S, hd, Eigen::OuterStride<>(q_stride));
        for (std::int64_t r0 = 0; r0 < S; r0 += kBlock) {
          const std::int64_t rows = std::min(kBlock, S - r0), keys = r0 + rows;
          auto block = scores.topLeftCorner(rows, keys);
          block.noalias() = (Q.middleRows(r0, rows) * K.topRows(keys).transpose()) * scale;
          for (std::int64_t i = 0; i < rows; ++i) {  // softmax over positions 0..r0+i
            const std::int64_t visible = r0 + i + 1;
            auto row = block.row(i).head(visible).array();
            row = (row - row.maxCoeff()).exp();
            row /= row.sum();
            block.row(i).tail(keys - visible).setZero();
          }
          O.middleRows(r0, rows).noalias() = block * V.topRows(keys);
        }
      }
    }
  }

  void swiglu(const float* gate, const float* up, std::int64_t n, float* out) override {
    // In fixed chunks through Eigen's vectorized exp (scalar std::exp was most of this kernel).
    constexpr std::int64_t kChunk = 1 << 14;
#pragma omp parallel for schedule(static)
    for (std::int64_t begin = 0; begin < n; begin += kChunk) {
      const std::int64_t count = std::min(kChunk, n - begin);
      const Eigen::Map<const Eigen::ArrayXf> g(gate + begin, count), u(up + begin, count);
      Eigen::Map<Eigen::ArrayXf>(out + begin, count) = g / (1.0f + (-g).exp()) * u;
    }
  }

  void add(float* x, const float* y, std::int64_t n) override {
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < n; ++i) x[i] += y[i];
  }

  void gather_rows(const float* x, std::int64_t D, std::span<const std::int64_t> rows, float* out) override {
    const auto n = static_cast<std::int64_t>(rows.size());
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < n; ++i)
      std::copy(x + rows[static_cast<std::size_t>(i)] * D, x + (rows[static_cast<std::size_t>(i)] + 1) * D,
                out + i * D);
  }

  void scatter_add_rows(const float* y, std::int64_t D, std::span<const std::int64_t> rows,
                        std::span<const float> weights, float* x) override {
    // rows are distinct within one call (one expert's tokens), so threads never share a row
    const auto n = static_cast<std::int64_t>(rows.size());
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < n; ++i)
      Eigen::Map<Eigen::ArrayXf>(x + rows[static_cast<std::size_t>(i)] * D, D) +=
          weights[static_cast<std::size_t>(i)] * Eigen::Map<const Eigen::ArrayXf>(y + i * D, D);
  }

  void stats_accumulate(const float* x, std::int64_t T, std::int64_t D, double* A) override {
    // Xd = [x 1] in f64, then the upper triangle of A += Xd^T Xd in fixed column blocks (a dgemm
    // for the rectangle above each diagonal block, a dsyrk for the block's triangle), so the
    // result does not depend on the thread count and no lower-triangle work is done.
    const std::int64_t n = D + 1;
    xd_.resize(static_cast<std::size_t>(T * n));
#pragma omp parallel for schedule(static)
    for (std::int64_t t = 0; t < T; ++t) {
      double* row = xd_.data() + t * n;
      for (std::int64_t i = 0; i < D; ++i) row[i] = x[t * D + i];
      row[D] = 1.0;
    }
    const std::int64_t blocks = (n + kStatsBlock - 1) / kStatsBlock;
#pragma omp parallel for schedule(dynamic, 1)
    for (std::int64_t b = blocks - 1; b >= 0; --b) {  // largest blocks first
      const std::int64_t j0 = b * kStatsBlock, width = std::min(kStatsBlock, n - j0);
      const double* columns = xd_.data() + j0;
      if (j0 > 0)  // the rectangle above the diagonal block
        cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, to_int(j0), to_int(width), to_int(T), 1.0, xd_.data(),
                    to_int(n), columns, to_int(n), 1.0, A + j0, to_int(n));
      // the diagonal block's upper triangle
      cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, to_int(width), to_int(T), 1.0, columns, to_int(n), 1.0,
                  A + j0 * n + j0, to_int(n));
    }
  }

 private:
  std::vector<double> xd_;  // stats_accumulate's [x 1] in f64
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int threads) { return std::make_unique<CpuBackend>(threads); }

}  // namespace dume
