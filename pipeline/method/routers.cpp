#include "routers.hpp"

#include <Eigen/Cholesky>
#include <cmath>
#include <random>

#include "error.hpp"

namespace dume {

namespace {

// Each expert's weight row to unit L2 norm and its bias divided by the same norm; a zero norm
// is replaced by 1e-6 and reported.
void normalize(RouterSolution& r) {
  for (Eigen::Index e = 0; e < r.weight.rows(); ++e) {
    double norm = r.weight.row(e).norm();
    if (norm == 0.0) {
      norm = 1e-6;
      r.zero_norm.push_back(static_cast<int>(e));
    }
    r.weight.row(e) /= norm;
    r.bias(e) /= norm;
  }
}

}  // namespace

RouterSolution ridge_solve(const MatrixXdRow& A, const Eigen::MatrixXd& B, double lambda, bool bias,
                           std::int64_t layer) {
  const Eigen::Index n = A.rows(), D = n - 1, E = B.cols();
  const Eigen::Index m = bias ? n : D;  // unknowns per expert
  // Non-finite statistics come from a forward pass that overflowed (huge weights): the solve
  // would turn them into NaN routers without complaint.
  if (!A.allFinite() || !B.allFinite())
    throw Error("layer " + std::to_string(layer) + ": the statistics hold non-finite values (the forward pass "
                "overflowed: check the experts' weights for huge values)");
  if (!std::isfinite(lambda) || lambda < 0)
    throw Error("layer " + std::to_string(layer) + ": router.lambda must be finite and >= 0");
  Eigen::MatrixXd system = A.topLeftCorner(m, m);
  system.diagonal().array() += lambda;
  const Eigen::LLT<Eigen::MatrixXd> cholesky(system);
  if (cholesky.info() != Eigen::Success)
    throw Error("layer " + std::to_string(layer) + ": A + lambda I is singular, not positive definite (Cholesky failed at "
                "lambda = " + std::to_string(lambda) + "); set a larger router.lambda");
  // A rank-deficient A (fewer calibration rows than unknowns, lambda = 0) can pass the Cholesky on
  // rounding noise: its pivots then span more than ~1e15, and the solution would be noise too.
  const Eigen::VectorXd pivots = cholesky.matrixL().toDenseMatrix().diagonal();
  const double condition = std::pow(pivots.maxCoeff() / pivots.minCoeff(), 2);
  if (!(condition < 1e15))
    throw Error("layer " + std::to_string(layer) + ": A + lambda I is numerically singular (condition number about " +
                std::to_string(condition) + " at lambda = " + std::to_string(lambda) + "); set a larger router.lambda");
  const Eigen::MatrixXd W = cholesky.solve(B.topRows(m));  // m x E
  // Positive definite, yet so ill-conditioned that the solution overflowed (lambda = 0 with
  // nearly collinear hidden states).
  if (!W.allFinite())
    throw Error("layer " + std::to_string(layer) + ": the router solve overflowed at lambda = " + std::to_string(lambda) +
                " (A + lambda I is nearly singular); set a larger router.lambda");
  RouterSolution r;
  r.weight = W.topRows(D).transpose();
  r.bias = bias ? Eigen::VectorXd(W.row(D).transpose()) : Eigen::VectorXd::Zero(E);
  normalize(r);
  return r;
}

GaussianFit gaussian_fit(const DomainStatistics& domain, std::int64_t layer) {
  const MatrixXdRow& A = domain.A.at(static_cast<std::size_t>(layer));  // sums of [x 1][x 1]^T
  const Eigen::Index D = A.rows() - 1;
  const std::string where = "layer " + std::to_string(layer) + ", domain '" + domain.name + "'";
  if (!A.allFinite()) throw Error(where + ": the statistics hold non-finite values (the forward pass overflowed)");
  const double n = A(D, D);
  if (!(n >= 2)) throw Error(where + ": a Gaussian router needs at least 2 calibration tokens per domain");
  GaussianFit fit;
  fit.mean = A.col(D).head(D) / n;
  fit.covariance = A.topLeftCorner(D, D) / n - fit.mean * fit.mean.transpose();
  return fit;
}

RouterSolution gaussian_solve(const Statistics& stats, double shrinkage, std::int64_t layer) {
  const Eigen::Index D = stats.hidden_size, E = static_cast<Eigen::Index>(stats.domains.size());
  if (!std::isfinite(shrinkage) || shrinkage < 0)
    throw Error("layer " + std::to_string(layer) + ": router.lambda (the covariance shrinkage) must be finite and >= 0");
  RouterSolution r;
  r.weight.resize(E, D);
  r.bias.resize(E);
  r.quadratic.resize(E * D, D);
  for (Eigen::Index e = 0; e < E; ++e) {
    const DomainStatistics& domain = stats.domains[static_cast<std::size_t>(e)];
    auto [mean, covariance] = gaussian_fit(domain, layer);
    covariance.diagonal().array() += shrinkage * covariance.trace() / static_cast<double>(D);
    const Eigen::LLT<Eigen::MatrixXd> cholesky(covariance);
    if (cholesky.info() != Eigen::Success || !(cholesky.matrixLLT().diagonal().minCoeff() > 0))
      throw Error("layer " + std::to_string(layer) + ", domain '" + domain.name + "': the covariance of the MLP inputs is singular (Cholesky failed at shrinkage " +
                  std::to_string(shrinkage) + "); set a larger router.lambda");
    // L^{-1}: (x - mu)^T C^{-1} (x - mu) = |L^{-1} (x - mu)|^2.
    const Eigen::MatrixXd inverse_factor =
        cholesky.matrixL().solve(Eigen::MatrixXd::Identity(D, D)).triangularView<Eigen::Lower>();
    r.quadratic.middleRows(e * D, D) = inverse_factor;
    r.weight.row(e) = mean.transpose();
    r.bias(e) = -cholesky.matrixLLT().diagonal().array().log().sum();  // -1/2 log det C
  }
  return r;
}

RidgeSystem ridge_system(const RouterSettings& settings, const Statistics& stats, std::int64_t layer) {
  if (!settings.balance) return {stats.total_A(layer), stats.B(layer)};
  // Every domain weighted equally: its A (and so its B column) divided by its token count.
  RidgeSystem system{MatrixXdRow::Zero(stats.hidden_size + 1, stats.hidden_size + 1), stats.B(layer)};
  for (std::size_t e = 0; e < stats.domains.size(); ++e) {
    const double n = static_cast<double>(stats.domains[e].tokens);
    system.A += stats.domains[e].A[static_cast<std::size_t>(layer)] / n;
    system.B.col(static_cast<Eigen::Index>(e)) /= n;
  }
  return system;
}

RouterSolution build_router(const RouterSettings& settings, const Statistics& stats, std::int64_t layer) {
  if (settings.method == RouterMethod::dume) {
    const RidgeSystem system = ridge_system(settings, stats, layer);
    return ridge_solve(system.A, system.B, settings.lambda, settings.bias, layer);
  }
  if (settings.method == RouterMethod::gaussian) return gaussian_solve(stats, settings.lambda, layer);
  const auto E = static_cast<Eigen::Index>(stats.domains.size());
  const Eigen::Index D = stats.hidden_size;
  RouterSolution r;
  r.weight.resize(E, D);
  r.bias = Eigen::VectorXd::Zero(E);
  if (settings.method == RouterMethod::hidden) {
    const Eigen::MatrixXd B = stats.B(layer);  // column e: sum of domain e's [x 1]
    for (Eigen::Index e = 0; e < E; ++e)
      r.weight.row(e) = B.col(e).head(D).transpose() / B(D, e);
  } else {  // random
    std::mt19937_64 rng(0x5eed + static_cast<std::uint64_t>(layer));
    std::normal_distribution<double> normal;
    for (Eigen::Index i = 0; i < r.weight.size(); ++i) r.weight.data()[i] = normal(rng);
  }
  normalize(r);
  return r;
}

}  // namespace dume
