// The CUDA backend: the forward pass and the statistics on one GPU, behind the same interface
// as the CPU reference (backend.hpp). GEMMs go through cuBLAS in f32 (f32 accumulation), the
// statistics update is a cuBLAS DSYRK on [x 1] in f64 with A resident on the device, and the
// element-wise work, RMSNorm, rotary embeddings and causal attention are kernels here.
// Every CUDA and cuBLAS call is checked; a failure names the call, the error and file:line.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "backend.hpp"
#include "error.hpp"

#define CUDA_CHECK(e) DUME_CHECK_GEN(e, cudaSuccess, cudaGetErrorString)
#define CUBLAS_CHECK(e) DUME_CHECK_GEN(e, CUBLAS_STATUS_SUCCESS, cublasGetStatusString)
// A kernel launch reports a bad configuration at once and a fault at the next synchronization.
#define LAUNCH_CHECK() CUDA_CHECK(cudaGetLastError())

namespace dume {

namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr int kMaxHeadDim = 256;  // attention keeps a query row in registers: hd / 32 values per lane

int blocks_for(std::int64_t n) { return static_cast<int>((n + kThreads - 1) / kThreads); }

int to_int(std::int64_t v) {
  if (v > std::numeric_limits<int>::max()) throw Error("dimension " + std::to_string(v) + " exceeds cuBLAS's int range");
  return static_cast<int>(v);
}

__device__ float warp_sum(float v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__global__ void embed_kernel(const std::uint32_t* tokens, const float* table, std::int64_t T, std::int64_t D, float* out) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i < T * D) out[i] = table[static_cast<std::int64_t>(tokens[i / D]) * D + i % D];
}

// One block per row; transformers' order: the mean of squares in f32, x * rsqrt(mean + eps) * w.
__global__ void rms_norm_kernel(const float* x, const float* w, std::int64_t D, float eps, float* out) {
  const float* row = x + blockIdx.x * D;
  float sum = 0.0f;
  for (std::int64_t i = threadIdx.x; i < D; i += blockDim.x) sum += row[i] * row[i];
  __shared__ float partial[kThreads / kWarp];
  sum = warp_sum(sum);
  if (threadIdx.x % kWarp == 0) partial[threadIdx.x / kWarp] = sum;
  __syncthreads();
  if (threadIdx.x < kWarp) {
    sum = threadIdx.x < blockDim.x / kWarp ? partial[threadIdx.x] : 0.0f;
    sum = warp_sum(sum);
    if (threadIdx.x == 0) partial[0] = sum;
  }
  __syncthreads();
  const float scale = rsqrtf(partial[0] / static_cast<float>(D) + eps);
  for (std::int64_t i = threadIdx.x; i < D; i += blockDim.x) out[blockIdx.x * D + i] = row[i] * scale * w[i];
}

__global__ void add_bias_kernel(float* y, const float* bias, std::int64_t T, std::int64_t N) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i < T * N) y[i] += bias[i % N];
}

// rotate_half: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin) on the two halves of each head.
__global__ void rope_kernel(float* x, std::int64_t rows, std::int64_t S, std::int64_t heads, std::int64_t hd,
                            const float* cos, const float* sin) {
  const std::int64_t half = hd / 2;
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i >= rows * heads * half) return;
  const std::int64_t j = i % half, head = i / half % heads, row = i / half / heads, s = row % S;
  float* h = x + row * heads * hd + head * hd;
  const float c = cos[s * half + j], sn = sin[s * half + j], x1 = h[j], x2 = h[j + half];
  h[j] = x1 * c - x2 * sn;
  h[j + half] = x2 * c + x1 * sn;
}

// One warp per (sequence, head, query position): scores against keys 0..s with an online
// softmax (running max and sum), the output accumulated in registers, hd / 32 values per lane.
__global__ void attention_kernel(const float* q, const float* k, const float* v, std::int64_t B, std::int64_t S,
                                 std::int64_t H, std::int64_t Hkv, std::int64_t hd, float scale, float* out) {
  const std::int64_t warp = (blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (warp >= B * H * S) return;
  const std::int64_t s = warp % S, h = warp / S % H, b = warp / S / H;
  const std::int64_t q_stride = H * hd, kv_stride = Hkv * hd, kvh = h / (H / Hkv);
  const float* query = q + (b * S + s) * q_stride + h * hd;
  const float* keys = k + b * S * kv_stride + kvh * hd;
  const float* values = v + b * S * kv_stride + kvh * hd;
  constexpr int kPerLane = kMaxHeadDim / kWarp;
  float qr[kPerLane], acc[kPerLane];
  for (int r = 0; r < kPerLane; ++r) {
    const std::int64_t d = lane + r * kWarp;
    qr[r] = d < hd ? query[d] : 0.0f;
    acc[r] = 0.0f;
  }
  float running_max = -INFINITY, running_sum = 0.0f;
  for (std::int64_t t = 0; t <= s; ++t) {
    float dot = 0.0f;
    for (int r = 0; r < kPerLane; ++r) {
      const std::int64_t d = lane + r * kWarp;
      if (d < hd) dot += qr[r] * keys[t * kv_stride + d];
    }
    const float score = warp_sum(dot) * scale;
    const float new_max = fmaxf(running_max, score);
    const float correction = expf(running_max - new_max), p = expf(score - new_max);
    running_sum = running_sum * correction + p;
    for (int r = 0; r < kPerLane; ++r) {
      const std::int64_t d = lane + r * kWarp;
      if (d < hd) acc[r] = acc[r] * correction + p * values[t * kv_stride + d];
    }
    running_max = new_max;
  }
  float* o = out + (b * S + s) * q_stride + h * hd;
  for (int r = 0; r < kPerLane; ++r) {
    const std::int64_t d = lane + r * kWarp;
    if (d < hd) o[d] = acc[r] / running_sum;
  }
}

__global__ void swiglu_kernel(const float* gate, const float* up, std::int64_t n, float* out) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) {
    const float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

__global__ void add_kernel(float* x, const float* y, std::int64_t n) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) x[i] += y[i];
}

__global__ void gather_rows_kernel(const float* x, std::int64_t D, const std::int64_t* rows, std::int64_t n, float* out) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i < n * D) out[i] = x[rows[i / D] * D + i % D];
}

// Rows are distinct within one call (one expert's tokens): no two threads add to one element.
__global__ void scatter_add_rows_kernel(const float* y, std::int64_t D, const std::int64_t* rows, const float* weights,
                                        std::int64_t n, float* x) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i < n * D) x[rows[i / D] * D + i % D] += weights[i / D] * y[i];
}

// [x 1] in f64: row t of x (T, D) becomes row t of xd (T, D + 1).
__global__ void widen_kernel(const float* x, std::int64_t T, std::int64_t D, double* xd) {
  const std::int64_t n = D + 1;
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i < T * n) xd[i] = i % n == D ? 1.0 : static_cast<double>(x[i / n * D + i % n]);
}

template <class T>
BasicBuffer<T> device_alloc(std::size_t n) {
  T* p = nullptr;
  CUDA_CHECK(cudaMalloc(&p, std::max<std::size_t>(n, 1) * sizeof(T)));
  return BasicBuffer<T>(p, n, std::shared_ptr<void>(p, [](void* q) { cudaFree(q); }));
}

// A device array that grows to the largest request (host data uploaded per call).
template <class T>
class Scratch {
 public:
  T* upload(const T* host, std::size_t n) {
    if (buffer_.size() < n) buffer_ = device_alloc<T>(n);
    CUDA_CHECK(cudaMemcpy(buffer_.data(), host, n * sizeof(T), cudaMemcpyHostToDevice));
    return buffer_.data();
  }
  T* reserve(std::size_t n) {
    if (buffer_.size() < n) buffer_ = device_alloc<T>(n);
    return buffer_.data();
  }

 private:
  BasicBuffer<T> buffer_;
};

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : device_(device) {
    CUDA_CHECK(cudaSetDevice(device_));
    CUBLAS_CHECK(cublasCreate(&blas_));
    // Exact f32 products (no TF32): the results are compared with the CPU reference near 1e-5.
    CUBLAS_CHECK(cublasSetMathMode(blas_, CUBLAS_PEDANTIC_MATH));
  }
  ~CudaBackend() override { cublasDestroy(blas_); }
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  std::string describe() const override {
    cudaDeviceProp p{};
    CUDA_CHECK(cudaGetDeviceProperties(&p, device_));
    int version = 0;
    CUBLAS_CHECK(cublasGetVersion(blas_, &version));
    return "cuda: device " + std::to_string(device_) + " " + p.name + " (sm_" + std::to_string(p.major) +
           std::to_string(p.minor) + ", " + std::to_string(p.totalGlobalMem >> 30) + " GiB), cuBLAS " +
           std::to_string(version);
  }

  BackendKind kind() const override { return BackendKind::cuda; }
  void synchronize() override { CUDA_CHECK(cudaDeviceSynchronize()); }

  Buffer alloc(std::size_t n) override { return device_alloc<float>(n); }
  Buffer upload(std::span<const float> host) override {
    Buffer b = device_alloc<float>(host.size());
    CUDA_CHECK(cudaMemcpy(b.data(), host.data(), host.size_bytes(), cudaMemcpyHostToDevice));
    return b;
  }
  void download(const float* src, std::span<float> host) override {
    CUDA_CHECK(cudaMemcpy(host.data(), src, host.size_bytes(), cudaMemcpyDeviceToHost));
  }
  void copy_in(std::span<const float> host, float* dst) override {
    CUDA_CHECK(cudaMemcpy(dst, host.data(), host.size_bytes(), cudaMemcpyHostToDevice));
  }
  Buffer64 alloc64(std::size_t n) override {
    Buffer64 b = device_alloc<double>(n);
    CUDA_CHECK(cudaMemset(b.data(), 0, std::max<std::size_t>(n, 1) * sizeof(double)));
    return b;
  }
  void download(const double* src, std::span<double> host) override {
    CUDA_CHECK(cudaMemcpy(host.data(), src, host.size_bytes(), cudaMemcpyDeviceToHost));
  }
  void copy_in(std::span<const double> host, double* dst) override {
    CUDA_CHECK(cudaMemcpy(dst, host.data(), host.size_bytes(), cudaMemcpyHostToDevice));
  }

  void embed(std::span<const std::uint32_t> tokens, const float* table, std::int64_t D, float* out) override {
    const auto T = static_cast<std::int64_t>(tokens.size());
    const std::uint32_t* ids = tokens_.upload(tokens.data(), tokens.size());
    embed_kernel<<<blocks_for(T * D), kThreads>>>(ids, table, T, D, out);
    LAUNCH_CHECK();
  }

  void rms_norm(const float* x, const float* w, std::int64_t T, std::int64_t D, float eps, float* out) override {
    if (T == 0) return;
    rms_norm_kernel<<<to_int(T), kThreads>>>(x, w, D, eps, out);
    LAUNCH_CHECK();
  }

  void linear(const float* x, const float* w, const float* bias, std::int64_t T, std::int64_t K, std::int64_t N,
              float* y, bool accumulate) override {
    if (T == 0) return;
    // Row-major y (T, N) is column-major y^T (N, T) = W (N, K) x^T (K, T); row-major W (N, K) is
    // column-major W^T, hence the transpose on the first operand.
    const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    CUBLAS_CHECK(cublasSgemm(blas_, CUBLAS_OP_T, CUBLAS_OP_N, to_int(N), to_int(T), to_int(K), &alpha, w, to_int(K), x,
                             to_int(K), &beta, y, to_int(N)));
    if (bias) {
      add_bias_kernel<<<blocks_for(T * N), kThreads>>>(y, bias, T, N);
      LAUNCH_CHECK();
    }
  }

  void rope(float* x, std::int64_t B, std::int64_t S, std::int64_t heads, std::int64_t hd, const float* cos,
            const float* sin) override {
    const std::int64_t n = B * S * heads * (hd / 2);
    if (n == 0) return;
    rope_kernel<<<blocks_for(n), kThreads>>>(x, B * S, S, heads, hd, cos, sin);
    LAUNCH_CHECK();
  }

  void attention(const float* q, const float* k, const float* v, std::int64_t B, std::int64_t S, std::int64_t H,
                 std::int64_t Hkv, std::int64_t hd, float* out) override {
    if (hd > kMaxHeadDim) throw Error("cuda attention: head_dim " + std::to_string(hd) + " exceeds " + std::to_string(kMaxHeadDim));
    const std::int64_t warps = B * H * S;
    if (warps == 0) return;
    attention_kernel<<<blocks_for(warps * kWarp), kThreads>>>(q, k, v, B, S, H, Hkv, hd,
                                                              1.0f / std::sqrt(static_cast<float>(hd)), out);
    LAUNCH_CHECK();
  }

  void swiglu(const float* gate, const float* up, std::int64_t n, float* out) override {
    if (n == 0) return;
    swiglu_kernel<<<blocks_for(n), kThreads>>>(gate, up, n, out);
    LAUNCH_CHECK();
  }

  void add(float* x, const float* y, std::int64_t n) override {
    if (n == 0) return;
    add_kernel<<<blocks_for(n), kThreads>>>(x, y, n);
    LAUNCH_CHECK();
  }

  void gather_rows(const float* x, std::int64_t D, std::span<const std::int64_t> rows, float* out) override {
    const auto n = static_cast<std::int64_t>(rows.size());
    if (n == 0) return;
    gather_rows_kernel<<<blocks_for(n * D), kThreads>>>(x, D, rows_.upload(rows.data(), rows.size()), n, out);
    LAUNCH_CHECK();
  }

  void scatter_add_rows(const float* y, std::int64_t D, std::span<const std::int64_t> rows, std::span<const float> weights,
                        float* x) override {
    const auto n = static_cast<std::int64_t>(rows.size());
    if (n == 0) return;
    scatter_add_rows_kernel<<<blocks_for(n * D), kThreads>>>(y, D, rows_.upload(rows.data(), rows.size()),
                                                             weights_.upload(weights.data(), weights.size()), n, x);
    LAUNCH_CHECK();
  }

  void stats_accumulate(const float* x, std::int64_t T, std::int64_t D, double* A) override {
    if (T == 0) return;
    const std::int64_t n = D + 1;
    double* xd = xd_.reserve(static_cast<std::size_t>(T * n));
    widen_kernel<<<blocks_for(T * n), kThreads>>>(x, T, D, xd);
    LAUNCH_CHECK();
    // Row-major xd (T, n) is column-major X (n, T); A += X X^T. Row-major A's upper triangle is
    // column-major A's lower one.
    const double one = 1.0;
    CUBLAS_CHECK(cublasDsyrk(blas_, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, to_int(n), to_int(T), &one, xd, to_int(n), &one,
                             A, to_int(n)));
  }

 private:
  int device_;
  cublasHandle_t blas_ = nullptr;
  Scratch<std::uint32_t> tokens_;
  Scratch<std::int64_t> rows_;
  Scratch<float> weights_;
  Scratch<double> xd_;
};

}  // namespace

int cuda_device_count() {
  int count = 0;
  // No driver or no device is "no GPU here", not an error.
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear it
    return 0;
  }
  return count;
}

std::unique_ptr<Backend> make_cuda_backend(int device) {
  const int count = cuda_device_count();
  if (count == 0) throw Error("backend 'cuda': no CUDA device is visible (CUDA_VISIBLE_DEVICES, driver)");
  return std::make_unique<CudaBackend>(device % count);
}

}  // namespace dume
