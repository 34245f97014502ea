#include "ridge.hpp"

#include <Eigen/Cholesky>

#include "error.hpp"

namespace dume {

RouterSolution ridge_solve(const MatrixXdRow& A, const Eigen::MatrixXd& B, double lambda, bool bias,
                           std::int64_t layer) {
  const Eigen::Index n = A.rows(), D = n - 1, E = B.cols();
  const Eigen::Index m = bias ? n : D;  // unknowns per expert
  Eigen::MatrixXd system = A.topLeftCorner(m, m);
  system.diagonal().array() += lambda;
  const Eigen::LLT<Eigen::MatrixXd> cholesky(system);
  if (cholesky.info() != Eigen::Success)
    throw Error("layer " + std::to_string(layer) + ": A + lambda I is not positive definite (Cholesky failed at lambda = " +
                std::to_string(lambda) + "); set a larger router.lambda");
  const Eigen::MatrixXd W = cholesky.solve(B.topRows(m));  // m x E
  RouterSolution r;
  r.weight = W.topRows(D).transpose();
  r.bias = bias ? Eigen::VectorXd(W.row(D).transpose()) : Eigen::VectorXd::Zero(E);
  for (Eigen::Index e = 0; e < E; ++e) {
    double norm = r.weight.row(e).norm();
    if (norm == 0.0) {
      norm = 1e-6;
      r.zero_norm.push_back(static_cast<int>(e));
    }
    r.weight.row(e) /= norm;
    r.bias(e) /= norm;
  }
  return r;
}

}  // namespace dume
