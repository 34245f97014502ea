#include "router_tuning.hpp"

#include <algorithm>

#include <Eigen/Eigenvalues>
#include <cmath>
#include <cstring>
#include <iterator>

#include "comm.hpp"
#include "error.hpp"

namespace dume {

namespace {

// Candidate k of the grid: scale * 10^(k/2).
std::vector<double> grid(double scale, int lowest, int highest) {
  std::vector<double> values;
  for (int k = lowest; k <= highest; ++k) values.push_back(scale * std::pow(10.0, k / 2.0));
  return values;
}

// Mean over domains of the share of domain e's rows whose largest logit is e's.
double accuracy(const std::vector<Eigen::MatrixXd>& logits) {
  double sum = 0;
  for (std::size_t e = 0; e < logits.size(); ++e) {
    Eigen::Index hits = 0;
    for (Eigen::Index t = 0; t < logits[e].rows(); ++t) {
      Eigen::Index best = 0;
      logits[e].row(t).maxCoeff(&best);
      hits += best == static_cast<Eigen::Index>(e);
    }
    sum += static_cast<double>(hits) / static_cast<double>(std::max<Eigen::Index>(1, logits[e].rows()));
  }
  return sum / static_cast<double>(logits.size());
}

// Ridge: A = V diag(s) V^T once; W(lambda) = V diag(1 / (s + lambda)) V^T B, rows normalized as
// ridge_solve does.
LambdaSweep sweep_ridge(const RouterSettings& settings, const Statistics& stats, std::int64_t layer) {
  const RidgeSystem system = ridge_system(settings, stats, layer);
  const Eigen::Index D = stats.hidden_size, m = settings.bias ? D + 1 : D;
  const Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eigen(Eigen::MatrixXd(system.A.topLeftCorner(m, m)));
  if (eigen.info() != Eigen::Success) throw Error("layer " + std::to_string(layer) + ": eigendecomposition of A failed");
  const Eigen::MatrixXd& V = eigen.eigenvectors();
  const Eigen::VectorXd& s = eigen.eigenvalues();
  const Eigen::MatrixXd VtB = V.transpose() * system.B.topRows(m);
  std::vector<Eigen::MatrixXd> projected;  // each domain's held-out [x 1] in the eigenbasis
  for (const auto& domain : stats.domains) {
    const MatrixXfRow& X = domain.heldout[static_cast<std::size_t>(layer)];
    Eigen::MatrixXd rows(X.rows(), m);
    rows.leftCols(D) = X.cast<double>();
    if (settings.bias) rows.col(D).setOnes();
    projected.push_back(rows * V);
  }
  LambdaSweep sweep;
  sweep.lambdas = grid(s.sum() / static_cast<double>(m), -24, 2);
  for (double lambda : sweep.lambdas) {
    const Eigen::VectorXd shifted = s.array() + lambda;
    // Well inside what ridge_solve accepts (positive definite, condition number < 1e15).
    if (!(shifted.minCoeff() > 0) || !(shifted.maxCoeff() / shifted.minCoeff() < 1e12)) {
      sweep.accuracy.push_back(0);
      continue;
    }
    const Eigen::MatrixXd coefficients = shifted.cwiseInverse().asDiagonal() * VtB;  // m x E, eigenbasis
    const Eigen::VectorXd norms = (V.topRows(D) * coefficients).colwise().norm().transpose();
    std::vector<Eigen::MatrixXd> logits;
    for (const auto& rows : projected)
      logits.push_back((rows * coefficients) * norms.cwiseMax(1e-300).cwiseInverse().asDiagonal());
    sweep.accuracy.push_back(accuracy(logits));
  }
  return sweep;
}

// Gaussian: each domain's covariance C = U diag(c) U^T once; with shrinkage a the log-density is
// -1/2 sum_i z_i^2 / (c_i + a tau) - 1/2 sum_i log(c_i + a tau), z = U^T (x - mu), tau = tr C / D.
LambdaSweep sweep_gaussian(const Statistics& stats, std::int64_t layer) {
  const Eigen::Index D = stats.hidden_size;
  const auto E = stats.domains.size();
  struct Domain {
    Eigen::VectorXd c;                       // eigenvalues
    double tau = 0;
    std::vector<Eigen::MatrixXd> squared;    // [domain of the rows]: z^2, rows x D
  };
  std::vector<Domain> fitted(E);
  for (std::size_t e = 0; e < E; ++e) {
    const auto [mean, covariance] = gaussian_fit(stats.domains[e], layer);
    const Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eigen(covariance);
    if (eigen.info() != Eigen::Success)
      throw Error("layer " + std::to_string(layer) + ", domain '" + stats.domains[e].name + "': eigendecomposition failed");
    fitted[e].c = eigen.eigenvalues();
    fitted[e].tau = covariance.trace() / static_cast<double>(D);
    for (const auto& domain : stats.domains) {
      const Eigen::MatrixXd centered =
          domain.heldout[static_cast<std::size_t>(layer)].cast<double>().rowwise() - mean.transpose();
      fitted[e].squared.push_back((centered * eigen.eigenvectors()).array().square().matrix());
    }
  }
  LambdaSweep sweep;
  sweep.lambdas = grid(1.0, -16, 0);
  for (double shrinkage : sweep.lambdas) {
    std::vector<Eigen::MatrixXd> logits;
    for (std::size_t r = 0; r < E; ++r) logits.emplace_back(stats.domains[r].heldout[static_cast<std::size_t>(layer)].rows(), E);
    bool definite = true;
    for (std::size_t e = 0; e < E; ++e) {
      const Eigen::VectorXd variance = fitted[e].c.array() + shrinkage * fitted[e].tau;
      definite = definite && variance.minCoeff() > 0;
      const double log_det = variance.array().log().sum();
      for (std::size_t r = 0; r < E; ++r)
        logits[r].col(static_cast<Eigen::Index>(e)) =
            -0.5 * (fitted[e].squared[r] * variance.cwiseInverse()).array() - 0.5 * log_det;
    }
    sweep.accuracy.push_back(definite ? accuracy(logits) : 0.0);
  }
  return sweep;
}

}  // namespace

void require_heldout(const Statistics& stats) {
  for (const auto& d : stats.domains)
    if (!d.has_heldout() ||
        (!d.stored && std::all_of(d.heldout.begin(), d.heldout.end(), [](const MatrixXfRow& x) { return x.rows() == 0; })))
      throw Error("domain '" + d.name + "' has no held-out tokens to choose router settings on: calibrate it with "
                  "calibration.heldout_fraction > 0 (for example 0.1)");
}

LambdaSweep sweep_lambda(const RouterSettings& settings, const Statistics& stats, std::int64_t layer) {
  require_heldout(stats);
  if (settings.method != RouterMethod::dume && settings.method != RouterMethod::gaussian)
    throw Error("router.lambda: auto applies to the dume and gaussian routers, not '" + to_string(settings.method) + "'");
  LambdaSweep sweep = settings.method == RouterMethod::dume ? sweep_ridge(settings, stats, layer) : sweep_gaussian(stats, layer);
  double best = -1;  // the most accurate; ties go to the largest lambda (the most regularized)
  for (std::size_t i = 0; i < sweep.lambdas.size(); ++i)
    if (sweep.accuracy[i] >= best) {
      best = sweep.accuracy[i];
      sweep.best = sweep.lambdas[i];
    }
  return sweep;
}

Eigen::MatrixXd router_logits(const RouterSolution& router, const MatrixXfRow& X) {
  const Eigen::MatrixXd x = X.cast<double>();
  const Eigen::Index E = router.weight.rows(), D = router.weight.cols();
  if (router.quadratic.size() == 0) return (x * router.weight.transpose()).rowwise() + router.bias.transpose();
  Eigen::MatrixXd logits(x.rows(), E);
  for (Eigen::Index e = 0; e < E; ++e)
    logits.col(e) = router.bias(e) - 0.5 * ((x.rowwise() - router.weight.row(e)) * router.quadratic.middleRows(e * D, D).transpose())
                                               .rowwise()
                                               .squaredNorm()
                                               .array();
  return logits;
}

double choose_temperature(const HeldoutLogits& held) {
  const auto cross_entropy = [&](double log_t) {
    const double t = std::exp(log_t);
    double sum = 0;
    std::int64_t count = 0;
    for (const auto& [logits, e] : held)
      for (Eigen::Index r = 0; r < logits.rows(); ++r) {
        const Eigen::RowVectorXd z = logits.row(r) / t;
        const double top = z.maxCoeff();
        sum += top + std::log((z.array() - top).exp().sum()) - z(e);
        ++count;
      }
    return sum / static_cast<double>(std::max<std::int64_t>(1, count));
  };
  double lo = std::log(1e-4), hi = std::log(1e4);
  const double golden = (std::sqrt(5.0) - 1) / 2;
  double a = hi - golden * (hi - lo), b = lo + golden * (hi - lo);
  double fa = cross_entropy(a), fb = cross_entropy(b);
  for (int i = 0; i < 60; ++i) {
    if (fa <= fb) {
      hi = b, b = a, fb = fa;
      a = hi - golden * (hi - lo), fa = cross_entropy(a);
    } else {
      lo = a, a = b, fa = fb;
      b = lo + golden * (hi - lo), fb = cross_entropy(b);
    }
  }
  return std::exp((lo + hi) / 2);
}

namespace {

// Layer l's held-out logits of every domain under `router` (l of `one`, only_layer's).
void add_heldout_logits(const RouterSolution& router, const Statistics& one, std::int64_t l, HeldoutLogits& held) {
  for (std::size_t e = 0; e < one.domains.size(); ++e)
    held.emplace_back(router_logits(router, one.domains[e].heldout[static_cast<std::size_t>(l)]),
                      static_cast<Eigen::Index>(e));
}

}  // namespace

double choose_temperature(const std::vector<RouterSolution>& routers, const Statistics& stats) {
  require_heldout(stats);
  HeldoutLogits held;
  for (std::size_t l = 0; l < routers.size(); ++l)
    add_heldout_logits(routers[l], stats.only_layer(static_cast<std::int64_t>(l)), static_cast<std::int64_t>(l), held);
  return choose_temperature(held);
}

namespace {

// tune_routers' work on layers [first, end): their lambdas into settings.layer_lambda (L entries
// already) and their held-out logits (under the tuned lambda) into `held`.
void tune_layers(RouterSettings& settings, const Statistics& stats, std::int64_t first, std::int64_t end,
                 HeldoutLogits& held) {
  for (std::int64_t l = first; l < end; ++l) {
    const Statistics one = stats.only_layer(l);  // one layer's statistics in memory at a time
    RouterSettings layer = settings;
    if (settings.auto_lambda) settings.layer_lambda[static_cast<std::size_t>(l)] = layer.lambda = sweep_lambda(settings, one, l).best;
    if (settings.auto_temperature) add_heldout_logits(build_router(layer, one, l), one, l, held);
  }
}

}  // namespace

void tune_routers(RouterSettings& settings, const Statistics& stats) {
  settings.layer_lambda.clear();
  if (!settings.auto_lambda && !settings.auto_temperature) return;
  if (settings.auto_temperature) require_heldout(stats);
  if (settings.auto_lambda) settings.layer_lambda.assign(static_cast<std::size_t>(stats.layers()), 0.0);
  HeldoutLogits held;
  tune_layers(settings, stats, 0, stats.layers(), held);
  if (settings.auto_temperature) settings.temperature = choose_temperature(held);
}

namespace {

// What a rank of a grid tells rank 0 of the layers it solves, as doubles: per layer (layer,
// lambda, entries), then each held-out entry as (rows, columns, domain, values...).
std::string tuned_layers_message(RouterSettings& settings, const Statistics& stats, const Grid& grid) {
  std::vector<double> message;
  if (grid.solves_any() && settings.auto_temperature) require_heldout(stats);
  for (std::int64_t l = grid.first_layer(); l < grid.end_layer(); ++l) {
    if (!grid.solves(l)) continue;
    HeldoutLogits held;
    tune_layers(settings, stats, l, l + 1, held);
    message.insert(message.end(), {static_cast<double>(l), settings.auto_lambda ? settings.layer_lambda[static_cast<std::size_t>(l)] : 0.0,
                                   static_cast<double>(held.size())});
    for (const auto& [logits, domain] : held) {
      message.insert(message.end(), {static_cast<double>(logits.rows()), static_cast<double>(logits.cols()),
                                     static_cast<double>(domain)});
      message.insert(message.end(), logits.data(), logits.data() + logits.size());
    }
  }
  std::string bytes(message.size() * sizeof(double), '\0');
  if (!message.empty()) std::memcpy(bytes.data(), message.data(), bytes.size());
  return bytes;
}

// Rank 0: every rank's message read back, the lambdas into settings.layer_lambda; returns the
// held-out logits of every layer in layer order (as tune_routers has them).
HeldoutLogits read_tuned_layers(const std::vector<std::string>& messages, RouterSettings& settings, std::int64_t L) {
  std::vector<HeldoutLogits> by_layer(static_cast<std::size_t>(L));
  for (const std::string& received : messages) {
    std::vector<double> values(received.size() / sizeof(double));
    if (!values.empty()) std::memcpy(values.data(), received.data(), values.size() * sizeof(double));
    for (std::size_t k = 0; k < values.size();) {
      const auto l = static_cast<std::size_t>(values.at(k));
      if (settings.auto_lambda) settings.layer_lambda.at(l) = values.at(k + 1);
      const auto entries = static_cast<std::size_t>(values.at(k + 2));
      k += 3;
      for (std::size_t i = 0; i < entries; ++i) {
        const auto rows = static_cast<Eigen::Index>(values.at(k)), cols = static_cast<Eigen::Index>(values.at(k + 1));
        const auto domain = static_cast<Eigen::Index>(values.at(k + 2));
        k += 3;
        DUME_ASSERT(k + static_cast<std::size_t>(rows * cols) <= values.size());
        by_layer.at(l).emplace_back(Eigen::Map<const Eigen::MatrixXd>(values.data() + k, rows, cols), domain);
        k += static_cast<std::size_t>(rows * cols);
      }
    }
  }
  HeldoutLogits held;
  for (HeldoutLogits& layer : by_layer) std::move(layer.begin(), layer.end(), std::back_inserter(held));
  return held;
}

}  // namespace

void tune_routers(RouterSettings& settings, const Statistics& stats, const Grid& grid) {
  settings.layer_lambda.clear();
  if (!settings.auto_lambda && !settings.auto_temperature) return;
  const std::int64_t L = grid.first_layer(grid.stages());
  if (settings.auto_lambda) settings.layer_lambda.assign(static_cast<std::size_t>(L), 0.0);
  const std::vector<std::string> messages = gather_bytes(tuned_layers_message(settings, stats, grid));
  const HeldoutLogits held = read_tuned_layers(messages, settings, L);  // empty except on rank 0
  double temperature[] = {settings.temperature};
  if (mpi_rank() == 0 && settings.auto_temperature) temperature[0] = choose_temperature(held);
  broadcast(std::span<double>(temperature));
  settings.temperature = temperature[0];
  broadcast(std::span<double>(settings.layer_lambda));
}

RouterSolution layer_router(const RouterSettings& settings, const Statistics& stats, std::int64_t layer) {
  RouterSettings tuned = settings;
  if (settings.auto_lambda) tuned.lambda = settings.layer_lambda.at(static_cast<std::size_t>(layer));
  return build_router(tuned, stats.only_layer(layer), layer);
}

}  // namespace dume
