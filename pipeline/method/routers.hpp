// The closed-form DUME router of one layer: W = (A + lambda I)^{-1} B by Cholesky in f64,
// each expert's weight column scaled to unit L2 norm and its bias divided by the same norm.
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <vector>

#include "merge_config.hpp"
#include "statistics.hpp"

namespace dume {

// A linear router (logits = x W^T + b), or with `quadratic` a Gaussian one (model.hpp's Router).
struct RouterSolution {
  Eigen::MatrixXd weight;         // [E, D]; the domains' means for a Gaussian router
  Eigen::VectorXd bias;           // [E]; zero when solved without the constant column
  Eigen::MatrixXd quadratic;      // [E*D, D]: the stacked inverse Cholesky factors; empty when linear
  std::vector<int> zero_norm;     // experts whose column had zero norm (replaced by 1e-6)
};

// A: (D+1) x (D+1) symmetric, B: (D+1) x E. With bias = false the constant row and column are
// dropped (a router without bias). Throws naming the layer when A + lambda I is not positive
// definite.
RouterSolution ridge_solve(const MatrixXdRow& A, const Eigen::MatrixXd& B, double lambda, bool bias,
                           std::int64_t layer);

// A domain's MLP inputs at `layer` as a Gaussian, from its statistics (the 1/n estimates): mean
// (D) and covariance (D x D). Throws naming the layer and domain when the statistics are not
// finite or hold fewer than 2 tokens.
struct GaussianFit {
  Eigen::VectorXd mean;
  Eigen::MatrixXd covariance;
};
GaussianFit gaussian_fit(const DomainStatistics& domain, std::int64_t layer);

// Each domain's MLP inputs as a Gaussian: mean mu_e and covariance C_e from its own statistics,
// C_e shrunk toward (tr C_e / D) I by `shrinkage`, so logit_e(x) is its log-density up to a
// constant shared by all e: -1/2 (x - mu_e)^T C_e^{-1} (x - mu_e) - 1/2 log det C_e (equal priors).
// Throws naming the layer and domain when a covariance is not positive definite.
RouterSolution gaussian_solve(const Statistics& stats, double shrinkage, std::int64_t layer);

// The ridge router's A and B for `layer`: sums over the domains, or with settings.balance each
// domain's statistics divided by its token count first.
struct RidgeSystem {
  MatrixXdRow A;      // (D+1) x (D+1)
  Eigen::MatrixXd B;  // (D+1) x E
};
RidgeSystem ridge_system(const RouterSettings& settings, const Statistics& stats, std::int64_t layer);

// The router of `layer` by settings.method: "dume" (ridge_solve of ridge_system), "gaussian" (gaussian_solve with
// shrinkage settings.lambda), "hidden" (each domain's mean MLP input, unit-normalized, no bias)
// or "random" (seeded Gaussian unit directions, no bias).
RouterSolution build_router(const RouterSettings& settings, const Statistics& stats, std::int64_t layer);

}  // namespace dume
