// The compute backend interface: every operation of the forward pass, on row-major f32 arrays
// that live in the backend's memory (host memory for the CPU, device memory for CUDA).
// The CPU backend (Eigen + BLAS) is the reference; other backends are tested against it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

namespace dume {

// An array in a backend's memory; owning, or a view of memory owned elsewhere.
template <class T>
class BasicBuffer {
 public:
  BasicBuffer() = default;
  BasicBuffer(T* data, std::size_t size, std::shared_ptr<void> owner = nullptr)
      : data_(data), size_(size), owner_(std::move(owner)) {}
  T* data() const { return data_; }
  std::size_t size() const { return size_; }

 private:
  T* data_ = nullptr;
  std::size_t size_ = 0;
  std::shared_ptr<void> owner_;  // frees the memory; null for a view
};
using Buffer = BasicBuffer<float>;
using Buffer64 = BasicBuffer<double>;  // statistics

enum class BackendKind { cpu, cuda };

class Backend {
 public:
  virtual ~Backend() = default;
  // What runs, for logs and benchmarks: e.g. "cpu: OpenBLAS 0.3.21 (SkylakeX), 2 threads".
  virtual std::string describe() const = 0;
  virtual BackendKind kind() const = 0;
  // Waits for the work issued so far (for timing: a GPU backend's kernels run asynchronously;
  // every download waits anyway).
  virtual void synchronize() {}

  virtual Buffer alloc(std::size_t n) = 0;                   // n floats, uninitialized
  virtual Buffer upload(std::span<const float> host) = 0;    // read-only data (weights); CPU aliases it
  virtual void download(const float* src, std::span<float> host) = 0;
  virtual void copy_in(std::span<const float> host, float* dst) = 0;  // into a buffer from alloc
  virtual Buffer64 alloc64(std::size_t n) = 0;  // n doubles, zeroed
  virtual void download(const double* src, std::span<double> host) = 0;
  virtual void copy_in(std::span<const double> host, double* dst) = 0;  // into a buffer from alloc64

  // out (T, D) = table[tokens[t]] rows; token ids are host memory, already checked < V.
  virtual void embed(std::span<const std::uint32_t> tokens, const float* table, std::int64_t D, float* out) = 0;
  // out (T, D) = x / sqrt(mean(x^2) + eps) * w; out may alias x.
  virtual void rms_norm(const float* x, const float* w, std::int64_t T, std::int64_t D, float eps, float* out) = 0;
  // y (T, N) = x (T, K) W^T + bias, W (N, K) as Hugging Face stores it; bias (N) or null.
  // With accumulate, y += x W^T + bias.
  virtual void linear(const float* x, const float* w, const float* bias, std::int64_t T, std::int64_t K,
                      std::int64_t N, float* y, bool accumulate = false) = 0;
  // Rotary embedding in place on x (B*S, heads*hd), rotate_half convention: the row of sequence
  // b at position s uses cos/sin row s; cos, sin (S, hd/2).
  virtual void rope(float* x, std::int64_t B, std::int64_t S, std::int64_t heads, std::int64_t hd, const float* cos,
                    const float* sin) = 0;
  // Causal attention with grouped KV heads: q (B*S, H*hd), k/v (B*S, Hkv*hd), out (B*S, H*hd);
  // softmax(q k^T / sqrt(hd)) v per sequence and head, head h reading KV head h / (H / Hkv).
  virtual void attention(const float* q, const float* k, const float* v, std::int64_t B, std::int64_t S,
                         std::int64_t H, std::int64_t Hkv, std::int64_t hd, float* out) = 0;
  // out = silu(gate) * up over n elements; out may alias gate.
  virtual void swiglu(const float* gate, const float* up, std::int64_t n, float* out) = 0;
  // x += y over n elements.
  virtual void add(float* x, const float* y, std::int64_t n) = 0;

  // MoE dispatch: out (rows, D) = x[rows[i]]; and x[rows[i]] += weights[i] * y[i] for y (rows, D).
  // Row indices and weights are host memory; scatter_add_rows' rows are distinct (no atomics).
  virtual void gather_rows(const float* x, std::int64_t D, std::span<const std::int64_t> rows, float* out) = 0;
  virtual void scatter_add_rows(const float* y, std::int64_t D, std::span<const std::int64_t> rows,
                                std::span<const float> weights, float* x) = 0;

  // DUME statistics: A += [x 1]^T [x 1] for x (T, D), A ((D+1), (D+1)) row-major f64, of which
  // only the upper triangle (j >= i) is updated. Products and sums are f64: A matches a float64
  // reference from the same x to rounding.
  virtual void stats_accumulate(const float* x, std::int64_t T, std::int64_t D, double* A) = 0;
};

// threads (CPU) = 0: all cores; device (CUDA): the GPU's index, modulo the visible count (the
// caller passes the rank's local rank). Asking for a backend this build lacks throws, saying so.
std::unique_ptr<Backend> make_backend(BackendKind kind, int threads = 0, int device = 0);
// "cpu", "cuda", or "auto": cuda where this build has it and a GPU is visible, else cpu.
BackendKind parse_backend(const std::string& name);
bool cuda_built();
int cuda_device_count();  // 0 without a driver or a device

}  // namespace dume
