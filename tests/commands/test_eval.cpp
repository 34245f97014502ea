// `dume eval` on tiny real experts: every method's perplexity against an independent float64
// forward, routing fractions and retention as defined, and the files it writes.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "evaluate.hpp"
#include "merge.hpp"
#include "merge_inputs.hpp"
#include "moe_file.hpp"
#include "reference_forward.hpp"
#include "test_util.hpp"

namespace {

using namespace dume;
using namespace dume::test;
namespace fs = std::filesystem;

// Perplexity of the f64 reference forward over every test window of a domain.
double reference_perplexity(const Model& model, const CorpusWindows& windows, int forced_expert) {
  double nll = 0;
  std::int64_t count = 0;
  for (std::size_t w = 0; w < windows.count(); ++w) {
    const auto window = windows.window(w);
    const std::vector<std::uint32_t> tokens(window.begin(), window.end());
    const ReferenceRun run = reference_forward(model, tokens, forced_expert);
    for (std::size_t t = 0; t + 1 < tokens.size(); ++t) {
      const Vec& logits = run.logits[t];
      const double top = *std::max_element(logits.begin(), logits.end());
      double sum = 0;
      for (double v : logits) sum += std::exp(v - top);
      nll += std::log(sum) + top - logits[tokens[t + 1]];
      ++count;
    }
  }
  return std::exp(nll / static_cast<double>(count));
}

class Eval : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = make_suite_dir("eval");
    config_ = merge_config_parse(write_merge_inputs(dir_, 3, DType::BF16) + "eval: {top_k: [1, 2], max_sequences: 16}\n", dir_ / "m.yaml");
    run_merge(config_, false);
    result_ = run_eval(config_);
    write_eval_outputs(result_, config_);
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  static CorpusWindows test_windows(int d) {
    const CorpusSpec& spec = *config_.experts[static_cast<std::size_t>(d)].test;
    return CorpusWindows(corpus_read(spec), 32, 16, spec.path);
  }
  static inline fs::path dir_;
  static inline MergeConfig config_;
  static inline EvalResult result_;
};

TEST_F(Eval, ReportsEveryMethod) {
  const std::vector<std::string> expected = {"expert:d0", "expert:d1", "expert:d2", "average", "random",
                                             "random@k=2", "oracle", "dume", "dume@k=2"};
  EXPECT_EQ(result_.methods, expected);
  for (const auto& d : result_.domains) EXPECT_EQ(result_.tokens.at(d), 16 * 31);  // max_sequences windows of 32
}

TEST_F(Eval, ExpertsAndOracleMatchAFloat64Forward) {
  const Model moe = read_moe_model(config_.output.path);
  for (int d = 0; d < 3; ++d) {
    const CorpusWindows windows = test_windows(d);
    const std::string name = "d" + std::to_string(d);
    const Model expert = load_dense_model(HfCheckpoint(dir_ / name));
    EXPECT_NEAR(result_.perplexity.at(name).at("expert:" + name), reference_perplexity(expert, windows, 0),
                1e-4 * result_.perplexity.at(name).at("expert:" + name));
    EXPECT_NEAR(result_.perplexity.at(name).at("oracle"), reference_perplexity(moe, windows, d),
                1e-4 * result_.perplexity.at(name).at("oracle"));
  }
}

TEST_F(Eval, DumeMatchesAFloat64RoutedForward) {
  Model moe = read_moe_model(config_.output.path);
  for (int k : {1, 2}) {
    moe.top_k = k;
    const std::string method = k == 1 ? "dume" : "dume@k=2";
    for (int d = 0; d < 3; ++d) {
      const double ppl = result_.perplexity.at("d" + std::to_string(d)).at(method);
      EXPECT_NEAR(ppl, reference_perplexity(moe, test_windows(d), -1), 1e-4 * ppl) << method << " d" << d;
    }
  }
}

TEST_F(Eval, RoutingFractionsAndRetentionAreAsDefined) {
  ASSERT_EQ(result_.routing.size(), 3u);
  for (std::size_t d = 0; d < 3; ++d) {
    ASSERT_EQ(result_.routing[d].size(), 3u);
    for (const auto& layer : result_.routing[d]) {
      double sum = 0;
      for (double f : layer) sum += f;
      EXPECT_NEAR(sum, 1.0, 1e-12);
    }
    EXPECT_EQ(result_.accuracy(d)[1], result_.routing[d][1][d]);
    const std::string name = "d" + std::to_string(d);
    EXPECT_DOUBLE_EQ(result_.retention.at(name),
                     result_.perplexity.at(name).at("expert:" + name) / result_.perplexity.at(name).at("dume"));
  }
}

TEST_F(Eval, WritesJsonAndHeatmap) {
  const nlohmann::json j = nlohmann::json::parse(std::ifstream(config_.eval.output / "eval.json"));
  EXPECT_DOUBLE_EQ(j["perplexity"]["d1"]["dume"].get<double>(), result_.perplexity.at("d1").at("dume"));
  EXPECT_EQ(j["routing_accuracy"]["d2"].size(), 3u);
  EXPECT_TRUE(j["retention"].contains("d0"));
  std::ifstream png(config_.eval.output / "routing.png", std::ios::binary);
  char signature[8] = {};
  png.read(signature, 8);
  EXPECT_EQ(std::string(signature, 8), std::string("\x89PNG\r\n\x1a\n", 8));
}

}  // namespace
