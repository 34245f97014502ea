// Router settings chosen from data: calibration.heldout_fraction keeps some batches of every
// domain out of the statistics, and their MLP inputs (DomainStatistics::heldout) judge the
// candidates. Per layer, lambda (the ridge strength, or the Gaussian router's shrinkage) by
// held-out top-1 routing accuracy, the mean over domains; one eigendecomposition per layer (per
// domain for the Gaussian) makes each candidate cost a matrix product. The temperature by the
// held-out cross-entropy of softmax(logits / T) against each token's domain, over all layers.
#pragma once

#include <cstdint>
#include <vector>

#include "routers.hpp"

namespace dume {

struct LambdaSweep {
  std::vector<double> lambdas;   // candidates, ascending
  std::vector<double> accuracy;  // held-out top-1 accuracy of each, mean over domains
  double best = 0;               // the most accurate (ties: the largest)
};

// Throws naming the first domain without held-out tokens.
void require_heldout(const Statistics& stats);

// Candidates are the solve's scale (mean eigenvalue of the ridge system; for the Gaussian, a
// relative shrinkage) times 10^(k/2).
LambdaSweep sweep_lambda(const RouterSettings& settings, const Statistics& stats, std::int64_t layer);

// The router's logits (before the temperature) for the rows of X, in f64.
Eigen::MatrixXd router_logits(const RouterSolution& router, const MatrixXfRow& X);

// The temperature minimizing the held-out cross-entropy of the routers' softmax (golden-section
// search over log T in [1e-4, 1e4]).
double choose_temperature(const std::vector<RouterSolution>& routers, const Statistics& stats);

// Every layer's router under `settings`, lambda chosen per layer when settings.auto_lambda (the
// choice goes into settings.layer_lambda) and the temperature when settings.auto_temperature.
std::vector<RouterSolution> build_routers(RouterSettings& settings, const Statistics& stats);

}  // namespace dume
