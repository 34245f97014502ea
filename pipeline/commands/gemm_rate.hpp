// This machine's dense f32 GEMM rate, measured in the same run as a benchmark so that its
// ratios compare against the machine's own limit, not a datasheet.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace dume {

struct GemmRate {
  std::string kernel;  // "openblas sgemm", "eigen sgemm" or "openblas dgemm"
  std::int64_t n = 0;  // square size
  double gflops = 0;   // best of the repeats, 2 n^3 FLOPs per product
};

// Times C = A B for each square size with OpenBLAS (f32 and f64) and with Eigen's own f32
// GEMM, each for at least `min_seconds`; checks one entry of each product against an f64 dot
// product first. OpenBLAS runs with as many threads as the backend would use.
std::vector<GemmRate> measure_gemm_rates(std::span<const std::int64_t> sizes, double min_seconds);

// The best rate among kernels whose name ends with `suffix` ("sgemm" or "dgemm").
GemmRate best_rate(const std::vector<GemmRate>& rates, const std::string& suffix);

}  // namespace dume
