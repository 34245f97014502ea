// Beyond the paper: the running mean / moving average of router logits along a sequence
// (causal), one layer deciding for the later ones, Gaussian routers, settings chosen on a
// held-out split, and the shared-weight strategies (task arithmetic, RegMean).
#include <gtest/gtest.h>

#include <Eigen/LU>
#include <array>
#include <limits>
#include <random>

#include "corpus.hpp"
#include "forward.hpp"
#include "merge.hpp"
#include "merge_inputs.hpp"
#include "reference_forward.hpp"
#include "regmean.hpp"
#include "routers.hpp"
#include "router_tuning.hpp"
#include "test_util.hpp"

namespace {

using namespace dume;
using namespace dume::test;
namespace fs = std::filesystem;

TEST(Routing, ParsesAndPrintsItsModes) {
  for (const char* text : {"token", "mean", "ema:0.25", "mean+layer:0", "token+layer:2", "ema:1+layer:1"})
    EXPECT_EQ(Routing::parse(text).to_string(), text);
  EXPECT_EQ(Routing::parse("ema:0.25").ema_rate, 0.25);
  EXPECT_EQ(Routing::parse("mean+layer:3").from_layer, 3);
  EXPECT_TRUE(Routing::parse("token").per_token());
  EXPECT_FALSE(Routing::parse("token+layer:0").per_token());
  for (const char* bad : {"", "median", "ema", "ema:0", "ema:1.5", "ema:x", "mean+layer", "mean+layer:-1", "mean+lay:0"})
    expect_error_with([&] { Routing::parse(bad); }, {"routing '" + std::string(bad) + "'"});
}

TEST(Routing, MeanAndEmaFollowEachSequenceFromItsStart) {
  // Two sequences of three positions, two experts.
  const std::vector<float> logits = {1, 0, 3, 0, 5, 3, /* second sequence */ -1, 2, 1, 0, 0, 4};
  std::vector<float> mean = logits;
  smooth_router_logits(Routing::parse("mean"), mean, 3, 2);
  const std::vector<float> expected_mean = {1, 0, 2, 0, 3, 1, -1, 2, 0, 1, 0, 2};
  EXPECT_EQ(mean, expected_mean);
  std::vector<float> ema = logits;
  smooth_router_logits(Routing::parse("ema:0.5"), ema, 3, 2);
  const std::vector<float> expected_ema = {1, 0, 2, 0, 3.5, 1.5, -1, 2, 0, 1, 0, 2.5};
  EXPECT_EQ(ema, expected_ema);
  std::vector<float> token = logits;
  smooth_router_logits(Routing::parse("token+layer:0"), token, 3, 2);
  EXPECT_EQ(token, logits);
}

// A tiny MoE: the tiny experts' shared weights, three of their MLPs per layer, random routers.
Model tiny_moe(const Routing& routing, int top_k) {
  Model m = tiny_expert(0);
  const ModelConfig& c = m.config;
  std::mt19937_64 rng(5);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (std::int64_t l = 0; l < c.num_layers; ++l) {
    auto& layer = m.experts[static_cast<std::size_t>(l)];
    for (int e = 1; e < 3; ++e) layer.push_back(tiny_expert(e).experts[static_cast<std::size_t>(l)][0]);
    Router r;
    r.weight.resize(3, c.hidden_size);
    r.bias = Vector::Zero(3);
    for (Eigen::Index i = 0; i < r.weight.size(); ++i) r.weight.data()[i] = normal(rng);
    m.routers.push_back(r);
  }
  m.top_k = top_k;
  m.routing = routing;
  return m;
}

// Causal: a token's route and logits never depend on later tokens, so the first P positions of
// a sequence route and predict as the sequence cut to P does (up to f32 rounding, since the
// GEMMs see other shapes). Averaging over the whole sequence would move them by O(1).
TEST(Routing, SmoothedRoutingIsCausal) {
  const std::vector<std::uint32_t> tokens = {3, 17, 40, 2, 9, 33, 60, 1, 8, 12, 50, 44};
  const std::int64_t S = static_cast<std::int64_t>(tokens.size()), P = 5, V = tiny_config().vocab_size;
  for (const char* mode : {"mean", "ema:0.3", "mean+layer:0", "token+layer:1"}) {
    const Model moe = tiny_moe(Routing::parse(mode), 2);
    auto backend = make_backend(BackendKind::cpu, 1);
    Forward forward(moe, *backend);
    const auto run = [&](std::int64_t n, std::vector<std::vector<float>>& routes) {
      ForwardOptions options;
      options.on_router_logits = [&](std::int64_t, std::span<float> logits) {
        routes.emplace_back(logits.begin(), logits.begin() + P * 3);
      };
      return forward.run(std::span(tokens).first(static_cast<std::size_t>(n)), 1, n, options);
    };
    std::vector<std::vector<float>> full_routes, prefix_routes;
    const std::vector<float> full = run(S, full_routes), prefix = run(P, prefix_routes);
    ASSERT_EQ(full_routes.size(), prefix_routes.size());
    for (std::size_t l = 0; l < full_routes.size(); ++l)
      for (std::int64_t t = 0; t < P; ++t) {
        std::array<std::int64_t, 2> a{}, b{};
        std::array<float, 2> wa{}, wb{};
        route_top_k(std::span(full_routes[l]).subspan(static_cast<std::size_t>(3 * t), 3), 2, a, wa);
        route_top_k(std::span(prefix_routes[l]).subspan(static_cast<std::size_t>(3 * t), 3), 2, b, wb);
        EXPECT_EQ(a, b) << mode << " layer " << l << " position " << t;
      }
    for (std::int64_t i = 0; i < P * V; ++i)
      ASSERT_NEAR(full[static_cast<std::size_t>(i)], prefix[static_cast<std::size_t>(i)], 1e-4) << mode;
  }
}

TEST(Routing, LaterLayersReuseTheDecidingLayersLogits) {
  const Model moe = tiny_moe(Routing::parse("mean+layer:0"), 1);
  auto backend = make_backend(BackendKind::cpu, 1);
  Forward forward(moe, *backend);
  std::vector<std::vector<float>> seen;
  ForwardOptions options;
  options.on_router_logits = [&](std::int64_t, std::span<float> logits) { seen.emplace_back(logits.begin(), logits.end()); };
  const std::vector<std::uint32_t> tokens = {3, 17, 40, 2, 9, 33};
  forward.run(tokens, 2, 3, options);
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[1], seen[0]);
  EXPECT_EQ(seen[2], seen[0]);
  const Model beyond = tiny_moe(Routing::parse("mean+layer:3"), 1);
  Forward bad(beyond, *backend);
  expect_error_with([&] { bad.run(tokens, 2, 3); }, {"mean+layer:3", "beyond the model's 3"});
}

// Statistics of E domains of Gaussian points in D dimensions (each its own mean and scales), and
// the points themselves.
struct GaussianDomains {
  Statistics stats;
  std::vector<Eigen::MatrixXd> points;  // [E]: n x D
};

// With `heldout` > 0, each domain also gets that many held-out rows of its distribution.
GaussianDomains gaussian_domains(Eigen::Index E, Eigen::Index D, Eigen::Index n, Eigen::Index heldout = 0) {
  GaussianDomains g;
  g.stats.hidden_size = D;
  std::mt19937_64 rng(11);
  std::normal_distribution<double> normal;
  for (Eigen::Index e = 0; e < E; ++e) {
    Eigen::MatrixXd mix(D, D), x(n, D);
    for (Eigen::Index i = 0; i < mix.size(); ++i) mix.data()[i] = normal(rng) / static_cast<double>(1 + e);
    const auto draw = [&](Eigen::Index rows) {
      Eigen::MatrixXd z(rows, D);
      for (Eigen::Index i = 0; i < z.size(); ++i) z.data()[i] = normal(rng);
      z = z * mix;
      z.rowwise() += Eigen::RowVectorXd::Constant(D, static_cast<double>(e));
      return z;
    };
    x = draw(n);
    const Eigen::MatrixXd held = draw(heldout);
    MatrixXdRow A(D + 1, D + 1);
    Eigen::MatrixXd augmented(n, D + 1);
    augmented << x, Eigen::VectorXd::Ones(n);
    A = augmented.transpose() * augmented;
    g.stats.domains.push_back({"d" + std::to_string(e), n, {A}, {}});
    if (heldout > 0) g.stats.domains.back().heldout.push_back(held.cast<float>());
    g.points.push_back(x);
  }
  return g;
}

// Router logits by the Router's formula: b_e - 1/2 |Q_e (x - W_e)|^2.
Eigen::VectorXd gaussian_logits(const RouterSolution& r, const Eigen::VectorXd& x) {
  const Eigen::Index E = r.weight.rows(), D = r.weight.cols();
  Eigen::VectorXd logits(E);
  for (Eigen::Index e = 0; e < E; ++e)
    logits(e) = r.bias(e) - 0.5 * (r.quadratic.middleRows(e * D, D) * (x - r.weight.row(e).transpose())).squaredNorm();
  return logits;
}

// Against each domain's log-density computed from its points (two-pass mean and covariance, an
// LU inverse and determinant), up to the constant -D/2 log(2 pi) that all domains share.
TEST(GaussianRouter, LogitsAreEachDomainsLogDensity) {
  const Eigen::Index E = 3, D = 5;
  const GaussianDomains g = gaussian_domains(E, D, 400);
  const double shrinkage = 0.05;
  const RouterSolution r = gaussian_solve(g.stats, shrinkage, 0);
  std::mt19937_64 rng(3);
  std::normal_distribution<double> normal;
  for (int trial = 0; trial < 5; ++trial) {
    Eigen::VectorXd x(D);
    for (Eigen::Index i = 0; i < D; ++i) x(i) = 1 + normal(rng);
    const Eigen::VectorXd logits = gaussian_logits(r, x);
    for (Eigen::Index e = 0; e < E; ++e) {
      const Eigen::MatrixXd& p = g.points[static_cast<std::size_t>(e)];
      const Eigen::VectorXd mean = p.colwise().mean();
      const Eigen::MatrixXd centered = p.rowwise() - mean.transpose();
      Eigen::MatrixXd covariance = centered.transpose() * centered / static_cast<double>(p.rows());
      covariance += shrinkage * covariance.trace() / static_cast<double>(D) * Eigen::MatrixXd::Identity(D, D);
      const Eigen::FullPivLU<Eigen::MatrixXd> lu(covariance);
      const double expected = -0.5 * (x - mean).dot(lu.inverse() * (x - mean)) - 0.5 * std::log(lu.determinant());
      EXPECT_NEAR(logits(e), expected, 1e-9 * std::max(1.0, std::abs(expected))) << "domain " << e;
    }
  }
}

TEST(GaussianRouter, EveryDomainsMeanRoutesToItsOwnExpert) {
  const GaussianDomains g = gaussian_domains(4, 6, 300);
  const RouterSolution r = gaussian_solve(g.stats, 0.01, 0);
  for (Eigen::Index e = 0; e < 4; ++e) {
    Eigen::Index best = 0;
    gaussian_logits(r, r.weight.row(e).transpose()).maxCoeff(&best);
    EXPECT_EQ(best, e);
  }
}

TEST(GaussianRouter, SingularCovarianceNamesTheLayerAndDomain) {
  GaussianDomains g = gaussian_domains(2, 4, 50);
  g.stats.domains[1].A[0].topLeftCorner(4, 4).row(2).setZero();  // a constant input direction
  g.stats.domains[1].A[0].topLeftCorner(4, 4).col(2).setZero();
  g.stats.domains[1].A[0](2, 4) = g.stats.domains[1].A[0](4, 2) = 0;
  expect_error_with([&] { gaussian_solve(g.stats, 0.0, 0); }, {"layer 0, domain 'd1'", "singular", "router.lambda"});
  EXPECT_NO_THROW(gaussian_solve(g.stats, 0.01, 0));  // shrinkage makes it definite
  g.stats.domains[0].A[0](0, 0) = std::numeric_limits<double>::infinity();
  expect_error_with([&] { gaussian_solve(g.stats, 0.01, 0); }, {"domain 'd0'", "non-finite"});
}

// The forward pass routes on the same log-densities, computed from its own MLP inputs.
TEST(GaussianRouter, TheForwardPassRoutesOnThoseLogDensities) {
  Model moe = tiny_moe(Routing::parse("token"), 1);
  const std::int64_t D = moe.config.hidden_size;
  const GaussianDomains g = gaussian_domains(3, D, 200);
  std::vector<RouterSolution> solved;
  for (auto& router : moe.routers) {
    solved.push_back(gaussian_solve(g.stats, 0.1, 0));
    router.weight = solved.back().weight.cast<float>();
    router.bias = solved.back().bias.cast<float>();
    router.quadratic = solved.back().quadratic.cast<float>();
  }
  auto backend = make_backend(BackendKind::cpu, 1);
  Forward forward(moe, *backend);
  std::vector<Eigen::MatrixXd> inputs;
  ForwardOptions options;
  options.on_mlp_input = [&](std::int64_t, const float* x, std::int64_t T) {
    inputs.push_back(Eigen::Map<const Matrix>(x, T, D).cast<double>());
  };
  std::size_t checked = 0;
  options.on_router_logits = [&](std::int64_t layer, std::span<float> logits) {
    const Eigen::MatrixXd& x = inputs.back();
    for (Eigen::Index t = 0; t < x.rows(); ++t) {
      const Eigen::VectorXd expected = gaussian_logits(solved[static_cast<std::size_t>(layer)], x.row(t).transpose());
      for (Eigen::Index e = 0; e < 3; ++e, ++checked)
        EXPECT_NEAR(logits[static_cast<std::size_t>(t * 3 + e)], expected(e), 1e-4 * std::max(1.0, std::abs(expected(e))));
    }
  };
  forward.run(std::vector<std::uint32_t>{3, 17, 40, 2, 9, 33, 60, 1}, 2, 4, options);
  EXPECT_EQ(checked, moe.routers.size() * 8 * 3);
}

TEST(HeldoutSplit, BatchesAreSpreadEvenly) {
  EXPECT_EQ(heldout_batches(10, 0.1), (std::vector<std::int64_t>{9}));
  EXPECT_EQ(heldout_batches(20, 0.25), (std::vector<std::int64_t>{3, 7, 11, 15, 19}));
  EXPECT_EQ(heldout_batches(6, 0.5), (std::vector<std::int64_t>{1, 3, 5}));
  EXPECT_TRUE(heldout_batches(50, 0.0).empty());
}

// The sweep's shortcut (one eigendecomposition) gives each candidate the accuracy of a direct
// solve at that lambda, evaluated on the held-out rows; for ridge (with and without bias) and
// the Gaussian router.
TEST(AutoLambda, SweepEqualsDirectSolves) {
  const GaussianDomains g = gaussian_domains(3, 6, 300, 200);
  for (const RouterMethod method : {RouterMethod::dume, RouterMethod::gaussian})
    for (bool bias : {true, false}) {
      RouterSettings settings;
      settings.method = method;
      settings.bias = bias;
      const LambdaSweep sweep = sweep_lambda(settings, g.stats, 0);
      ASSERT_FALSE(sweep.lambdas.empty());
      double best = 0;
      for (std::size_t i = 0; i < sweep.lambdas.size(); ++i) {
        if (sweep.accuracy[i] == 0) continue;  // refused as too ill-conditioned
        settings.lambda = sweep.lambdas[i];
        const RouterSolution r = build_router(settings, g.stats, 0);
        double accuracy = 0;
        for (std::size_t e = 0; e < 3; ++e) {
          const Eigen::MatrixXd logits = router_logits(r, g.stats.domains[e].heldout[0]);
          for (Eigen::Index t = 0; t < logits.rows(); ++t) {
            Eigen::Index top = 0;
            logits.row(t).maxCoeff(&top);
            accuracy += (top == static_cast<Eigen::Index>(e)) / 600.0;
          }
        }
        EXPECT_NEAR(sweep.accuracy[i], accuracy, 1e-12) << to_string(method) << " lambda " << sweep.lambdas[i];
        best = std::max(best, accuracy);
      }
      const auto chosen = std::find(sweep.lambdas.begin(), sweep.lambdas.end(), sweep.best) - sweep.lambdas.begin();
      EXPECT_NEAR(sweep.accuracy[static_cast<std::size_t>(chosen)], best, 1e-12) << to_string(method);
      EXPECT_GT(best, 0.5) << to_string(method);  // well above chance (1/3) on these separated domains
    }
}

TEST(AutoTemperature, MinimizesTheHeldOutCrossEntropy) {
  const GaussianDomains g = gaussian_domains(3, 6, 300, 200);
  RouterSettings settings;
  const std::vector<RouterSolution> routers = {build_router(settings, g.stats, 0)};
  const double t = choose_temperature(routers, g.stats);
  const auto cross_entropy = [&](double temperature) {
    double sum = 0;
    for (std::size_t e = 0; e < 3; ++e) {
      const Eigen::MatrixXd z = router_logits(routers[0], g.stats.domains[e].heldout[0]) / temperature;
      for (Eigen::Index r = 0; r < z.rows(); ++r)
        sum += std::log(z.row(r).array().exp().sum()) - z(r, static_cast<Eigen::Index>(e));
    }
    return sum;
  };
  EXPECT_LT(cross_entropy(t), cross_entropy(t * 1.05));
  EXPECT_LT(cross_entropy(t), cross_entropy(t / 1.05));
  Statistics without = g.stats;
  without.domains[2].heldout.clear();
  expect_error_with([&] { choose_temperature(routers, without); }, {"domain 'd2' has no held-out tokens", "heldout_fraction"});
}

class SharedStrategies : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = make_suite_dir("shared_strategies");
    write_merge_inputs(dir_, 3, DType::F32);
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  static inline fs::path dir_;
};

// Task arithmetic: base + s * (average - base), one tensor checked element by element.
TEST_F(SharedStrategies, TaskArithmeticScalesFromTheBaseTowardTheAverage) {
  std::vector<HfCheckpoint> checkpoints;
  for (int e = 0; e < 3; ++e) checkpoints.emplace_back(dir_ / ("d" + std::to_string(e)));
  const std::vector<const HfCheckpoint*> experts = {&checkpoints[0], &checkpoints[1], &checkpoints[2]};
  const SharedWeights average = average_shared_weights(experts, DType::F32);
  const SharedWeights base = average_shared_weights({experts[0]}, DType::F32);
  const std::string yaml = write_merge_inputs(dir_, 3, DType::F32);
  for (double s : {0.0, 0.5, 1.0, 1.5}) {
    MergeConfig config = merge_config_parse(yaml, dir_ / "c.yaml");
    config.shared_checkpoint = dir_ / "d0";
    config.shared_scale = s;
    const Matrix& q = average.layers[1].attention.q;
    const std::vector<float> w = shared_values_for(config, experts, DType::F32)
                                     .values(hf::layer(1, hf::q_proj), "/layers/1/self_attn/q_proj", {q.rows(), q.cols()});
    const Matrix expected = base.layers[1].attention.q + static_cast<float>(s) * (q - base.layers[1].attention.q);
    EXPECT_LT((Eigen::Map<const Matrix>(w.data(), q.rows(), q.cols()) - expected).cwiseAbs().maxCoeff(), 1e-6) << s;
  }
}

// RegMean's closed form: the normal equations sum_i (W - W_i) G~_i = 0 (G~ with off-diagonals
// scaled by 0.9) hold, identical experts merge to themselves, and a degenerate input is named.
TEST(Regmean, MergeSolvesTheNormalEquations) {
  std::mt19937_64 rng(7);
  std::normal_distribution<double> normal;
  const auto random = [&](Eigen::Index rows, Eigen::Index cols) {
    Eigen::MatrixXd m(rows, cols);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = normal(rng);
    return m;
  };
  std::vector<Eigen::MatrixXd> weights, grams;
  for (int i = 0; i < 3; ++i) {
    weights.push_back(random(4, 6));
    const Eigen::MatrixXd x = random(50, 6);
    grams.push_back(x.transpose() * x);
  }
  const Eigen::MatrixXd merged = regmean_merge(weights, grams, "test");
  Eigen::MatrixXd residual = Eigen::MatrixXd::Zero(4, 6);
  for (int i = 0; i < 3; ++i) {
    Eigen::MatrixXd g = 0.9 * grams[static_cast<std::size_t>(i)];
    g.diagonal() /= 0.9;
    residual += (merged - weights[static_cast<std::size_t>(i)]) * g;
  }
  EXPECT_LT(residual.cwiseAbs().maxCoeff(), 1e-9 * grams[0].cwiseAbs().maxCoeff());
  const std::vector<Eigen::MatrixXd> same(3, weights[0]);
  EXPECT_LT((regmean_merge(same, grams, "test") - weights[0]).cwiseAbs().maxCoeff(), 1e-12);
  grams[0].setZero();
  grams[1].setZero();
  grams[2].row(2).setZero();
  grams[2].col(2).setZero();
  expect_error_with([&] { regmean_merge(weights, grams, "layer 1 q_proj"); }, {"layer 1 q_proj", "singular", "shared: average"});
}

// An LM head merged by blocks of rows (as RegmeanGrams merges it) has the bits of the whole merge.
TEST(Regmean, BlocksOfRowsGiveTheWholeMergesBits) {
  const Eigen::Index rows = 2 * RegmeanSolver::kBlockRows + 101, in = 40;
  std::mt19937 rng(3);
  std::normal_distribution<double> normal;
  const auto random = [&](Eigen::Index r, Eigen::Index c) {
    return Eigen::MatrixXd(Eigen::MatrixXd::NullaryExpr(r, c, [&] { return normal(rng); }));
  };
  std::vector<Eigen::MatrixXd> weights, grams;
  for (int i = 0; i < 2; ++i) {
    weights.push_back(random(rows, in));
    const Eigen::MatrixXd x = random(3 * in, in);
    grams.push_back(x.transpose() * x);
  }
  const Eigen::MatrixXd whole = regmean_merge(weights, grams, "test");
  const RegmeanSolver solver(grams, "test");
  for (Eigen::Index r0 = 0; r0 < rows; r0 += RegmeanSolver::kBlockRows) {
    const Eigen::Index n = std::min<Eigen::Index>(RegmeanSolver::kBlockRows, rows - r0);
    const std::vector<Eigen::MatrixXd> block{weights[0].middleRows(r0, n), weights[1].middleRows(r0, n)};
    EXPECT_TRUE(solver.merge(block) == whole.middleRows(r0, n)) << "rows from " << r0;
  }
}

// A whole merge with shared: regmean: every q/k/v/o and LM head equals the merge of the experts'
// weights with Grams of their inputs from the independent float64 forward (each expert on its own
// calibration windows, truncated to context_tokens), to the f32 forward's rounding.
TEST_F(SharedStrategies, RegmeanMergeEqualsAFloat64Reference) {
  const std::string yaml = write_merge_inputs(dir_, 3, DType::F32, "regmean");
  MergeConfig config = merge_config_parse(yaml + "shared: regmean\n", dir_ / "c.yaml");
  run_merge(config, true);
  const Model moe = read_moe_model(dir_ / "regmean");
  const ModelConfig& c = moe.config;
  const auto L = static_cast<std::size_t>(c.num_layers);
  std::vector<Model> experts;
  std::vector<std::vector<Eigen::MatrixXd>> attention(L), output(L);
  std::vector<Eigen::MatrixXd> head;
  for (int e = 0; e < 3; ++e) {
    experts.push_back(load_dense_model(HfCheckpoint(dir_ / ("d" + std::to_string(e)))));
    const auto& spec = config.experts[static_cast<std::size_t>(e)].calibration;
    const CorpusWindows windows(corpus_read(spec), 32, 0, spec.path);
    const auto gram = [](const std::vector<Vec>& rows) {
      Eigen::MatrixXd g = Eigen::MatrixXd::Zero(static_cast<Eigen::Index>(rows[0].size()), static_cast<Eigen::Index>(rows[0].size()));
      for (const Vec& r : rows) {
        const Eigen::Map<const Eigen::VectorXd> v(r.data(), static_cast<Eigen::Index>(r.size()));
        g += v * v.transpose();
      }
      return g;
    };
    for (std::size_t l = 0; l < L; ++l) {
      attention[l].push_back(Eigen::MatrixXd::Zero(c.hidden_size, c.hidden_size));
      output[l].push_back(Eigen::MatrixXd::Zero(c.q_dim(), c.q_dim()));
    }
    head.push_back(Eigen::MatrixXd::Zero(c.hidden_size, c.hidden_size));
    for (std::size_t w = 0; w < windows.count(); ++w) {
      const auto window = windows.window(w);
      const ReferenceRun run = reference_forward(experts.back(), std::vector<std::uint32_t>(window.begin(), window.begin() + 24), 0);
      for (std::size_t l = 0; l < L; ++l) {
        attention[l].back() += gram(run.attention_inputs[l]);
        output[l].back() += gram(run.attention_outputs[l]);
      }
      head.back() += gram(run.head_inputs);
    }
  }
  const auto expect_merged = [&](const Matrix& stored, const std::function<const Matrix&(const Model&)>& tensor,
                                 const std::vector<Eigen::MatrixXd>& grams, const std::string& name) {
    std::vector<Eigen::MatrixXd> weights;
    for (const Model& m : experts) weights.push_back(tensor(m).cast<double>());
    const Eigen::MatrixXd expected = regmean_merge(weights, grams, name);
    EXPECT_LE((stored.cast<double>() - expected).cwiseAbs().maxCoeff() / expected.cwiseAbs().maxCoeff(), 1e-5) << name;
    EXPECT_GT((stored.cast<double>() - (weights[0] + weights[1] + weights[2]) / 3).cwiseAbs().maxCoeff(),
              1e-3 * expected.cwiseAbs().maxCoeff()) << name << " is not the average";
  };
  for (std::size_t l = 0; l < L; ++l) {
    const auto& a = moe.shared.layers[l].attention;
    expect_merged(a.q, [l](const Model& m) -> const Matrix& { return m.shared.layers[l].attention.q; }, attention[l], "q");
    expect_merged(a.k, [l](const Model& m) -> const Matrix& { return m.shared.layers[l].attention.k; }, attention[l], "k");
    expect_merged(a.v, [l](const Model& m) -> const Matrix& { return m.shared.layers[l].attention.v; }, attention[l], "v");
    expect_merged(a.o, [l](const Model& m) -> const Matrix& { return m.shared.layers[l].attention.o; }, output[l], "o");
  }
  if (moe.shared.lm_head.size())
    expect_merged(moe.shared.lm_head, [](const Model& m) -> const Matrix& { return m.shared.lm_head; }, head, "lm_head");
  // The rest is the average, exactly as shared: average stores it.
  std::vector<HfCheckpoint> checkpoints;
  for (int e = 0; e < 3; ++e) checkpoints.emplace_back(dir_ / ("d" + std::to_string(e)));
  const SharedWeights average = average_shared_weights({&checkpoints[0], &checkpoints[1], &checkpoints[2]}, DType::F32);
  EXPECT_EQ(moe.shared.embed, average.embed);
  EXPECT_EQ(moe.shared.layers[1].input_norm, average.layers[1].input_norm);
  EXPECT_EQ(read_moe_info(dir_ / "regmean").shared, "regmean");
}

TEST_F(SharedStrategies, ConfigKeys) {
  const std::string yaml = write_merge_inputs(dir_, 3, DType::F32);
  const MergeConfig c = merge_config_parse(yaml + "shared: {checkpoint: d0, scale: 0.25}\n", dir_ / "c.yaml");
  EXPECT_EQ(c.shared_scale, 0.25);
  expect_error_with([&] { merge_config_parse(yaml + "shared: {moe: m, scale: 0.5}\n", dir_ / "c.yaml"); },
                    {"shared.scale needs shared.checkpoint"});
  const std::string experts = yaml.substr(0, yaml.find("router:")) + "output: out\n";
  const MergeConfig r = merge_config_parse(
      experts + "router: {routing: \"ema:0.2+layer:0\"}\neval: {routing: [token, mean]}\n", dir_ / "c.yaml");
  EXPECT_EQ(r.router.routing.to_string(), "ema:0.2+layer:0");
  ASSERT_EQ(r.eval.routing.size(), 2u);
  EXPECT_EQ(r.eval.routing[1].to_string(), "mean");
  expect_error_with([&] { merge_config_parse(experts + "router: {routing: median}\n", dir_ / "c.yaml"); },
                    {"c.yaml:", "routing 'median'", "unknown mode"});
}

}  // namespace
