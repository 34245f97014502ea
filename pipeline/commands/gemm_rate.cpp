#include "gemm_rate.hpp"

#include <cblas.h>
#include <omp.h>

#include <Eigen/Core>
#include <chrono>
#include <cmath>

#include "error.hpp"

namespace dume {

namespace {

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

using RowMatrixD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

template <class Product>
double best_gflops(std::int64_t n, double min_seconds, Product&& product) {
  using Clock = std::chrono::steady_clock;
  product();  // warm up
  double best = 0.0, total = 0.0;
  while (total < min_seconds) {
    const auto t0 = Clock::now();
    product();
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    total += s;
    best = std::max(best, 2.0 * std::pow(static_cast<double>(n), 3) / s / 1e9);
  }
  return best;
}

template <class M>
void check_entry(const M& a, const M& b, const M& c, const char* kernel) {
  const Eigen::Index i = a.rows() / 3, j = b.cols() / 2;
  double ref = 0.0;
  for (Eigen::Index k = 0; k < a.cols(); ++k) ref += static_cast<double>(a(i, k)) * b(k, j);
  if (std::abs(c(i, j) - ref) > 1e-3 * (1.0 + std::abs(ref)))
    throw Error(std::string(kernel) + " GEMM gave a wrong result: " + std::to_string(c(i, j)) + " vs " +
                std::to_string(ref));
}

}  // namespace

std::vector<GemmRate> measure_gemm_rates(std::span<const std::int64_t> sizes, double min_seconds) {
  // OpenBLAS at its best: its own threads, one per OpenMP thread the backend would use.
  const int blas_threads = openblas_get_num_threads();
  openblas_set_num_threads(omp_get_max_threads());
  std::vector<GemmRate> rates;
  for (const std::int64_t n : sizes) {
    const RowMatrix a = RowMatrix::Random(n, n), b = RowMatrix::Random(n, n);
    RowMatrix c(n, n);
    const int ni = static_cast<int>(n);
    const auto blas = [&] {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, ni, ni, ni, 1.0f, a.data(), ni, b.data(), ni, 0.0f,
                  c.data(), ni);
    };
    blas();
    check_entry(a, b, c, "openblas");
    rates.push_back({"openblas sgemm", n, best_gflops(n, min_seconds, blas)});
    const auto eigen = [&] { c.noalias() = a * b; };
    eigen();
    check_entry(a, b, c, "eigen");
    rates.push_back({"eigen sgemm", n, best_gflops(n, min_seconds, eigen)});
    const RowMatrixD ad = a.cast<double>(), bd = b.cast<double>();
    RowMatrixD cd(n, n);
    const auto dgemm = [&] {
      cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, ni, ni, ni, 1.0, ad.data(), ni, bd.data(), ni, 0.0,
                  cd.data(), ni);
    };
    dgemm();
    check_entry(ad, bd, cd, "openblas dgemm");
    rates.push_back({"openblas dgemm", n, best_gflops(n, min_seconds, dgemm)});
  }
  openblas_set_num_threads(blas_threads);
  return rates;
}

GemmRate best_rate(const std::vector<GemmRate>& rates, const std::string& suffix) {
  GemmRate best;
  for (const auto& r : rates)
    if (r.kernel.ends_with(suffix) && r.gflops > best.gflops) best = r;
  return best;
}

}  // namespace dume
