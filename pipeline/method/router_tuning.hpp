// Router settings chosen from data: calibration.heldout_fraction keeps some batches of every
// domain out of the statistics, and their MLP inputs (DomainStatistics::heldout) judge the
// candidates. Per layer, lambda (the ridge strength, or the Gaussian router's shrinkage) by
// held-out top-1 routing accuracy, the mean over domains; one eigendecomposition per layer (per
// domain for the Gaussian) makes each candidate cost a matrix product. The temperature by the
// held-out cross-entropy of softmax(logits / T) against each token's domain, over all layers.
#pragma once

#include <cstdint>
#include <vector>

#include "grid.hpp"
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

// Held-out router logits, each with the domain its rows come from: what the temperature is
// chosen on.
using HeldoutLogits = std::vector<std::pair<Eigen::MatrixXd, Eigen::Index>>;
// The temperature minimizing the held-out cross-entropy of the routers' softmax (golden-section
// search over log T in [1e-4, 1e4]).
double choose_temperature(const HeldoutLogits& held);
// The same for these routers (layer l's at l) on the statistics' held-out inputs.
double choose_temperature(const std::vector<RouterSolution>& routers, const Statistics& stats);

// Chooses what `settings` leave to the held-out split: lambda per layer when settings.auto_lambda
// (into settings.layer_lambda), the temperature when settings.auto_temperature; one layer's
// statistics and router in memory at a time.
void tune_routers(RouterSettings& settings, const Statistics& stats);
// The same on a grid (collective): each rank tunes the layers it solves (Grid::solves) from its
// statistics, rank 0 chooses the temperature over every layer's held-out logits, and every rank
// learns the settings.
void tune_routers(RouterSettings& settings, const Statistics& stats, const Grid& grid);
// Layer l's router under tuned settings (settings.layer_lambda[l] when auto_lambda): solved when
// it is written, since a Gaussian router's factors are E D^2 doubles per layer (8.6 GB for two
// 8B experts over all layers).
RouterSolution layer_router(const RouterSettings& settings, const Statistics& stats, std::int64_t layer);

}  // namespace dume
