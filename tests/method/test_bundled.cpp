// The bundled tiny experts end to end, fast: merge (a subset of the calibration windows) and
// eval (a subset of the test windows), then the bars of the demo: DUME routes better than
// random on every domain for k = 1 and 2, and each expert is best on its own domain; and the
// recommended recipe beats the paper's on every domain.
#include <gtest/gtest.h>

#include "evaluate.hpp"
#include "merge.hpp"
#include "test_util.hpp"

namespace {

using namespace dume;
namespace fs = std::filesystem;

const fs::path kExperts = fs::path(DUME_SOURCE_DIR) / "experts";

using Bundled = dume::test::TempDirTest;

std::string bundled_experts() {
  std::string yaml = "experts:\n";
  for (const char* d : {"c", "python", "prose", "roff"}) {
    const std::string data = (kExperts / "data" / d).string();
    yaml += std::string("  - {name: ") + d + ", checkpoint: " + (kExperts / d).string() + ", calibration: {path: " +
            data + ".calib.bin, format: text-bytes}, test: {path: " + data + ".test.bin, format: text-bytes}}\n";
  }
  return yaml;
}

TEST_F(Bundled, DumeBeatsRandomRoutingOnEveryDomain) {
  std::string yaml = bundled_experts();
  yaml += "router: {context_tokens: 256}\n"
          "calibration: {sequence_length: 256, max_sequences: 96, batch_sequences: 8}\n"
          "output: moe\n"
          "eval: {methods: [dume, experts, random, oracle], top_k: [1, 2], max_sequences: 24}\n"
          "compute: {threads: 1}\n";
  const MergeConfig config = merge_config_parse(yaml, dir_ / "demo.yaml");
  run_merge(config, false);
  const EvalResult r = run_eval(config);
  for (const auto& d : r.domains) {
    const auto& p = r.perplexity.at(d);
    EXPECT_LT(p.at("dume"), p.at("random")) << d;
    EXPECT_LT(p.at("dume@k=2"), p.at("random@k=2")) << d;
    EXPECT_LT(p.at("oracle"), p.at("dume")) << d;  // the oracle bounds any router from below
    for (const auto& other : r.domains) {
      if (other != d) {
        EXPECT_LT(p.at("expert:" + d), p.at("expert:" + other)) << d << " vs " << other;
      }
    }
  }
}

TEST_F(Bundled, RecommendedRecipeBeatsThePapersOnEveryDomain) {
  // 128 windows in 32 batches (three held out), 32 test windows: small enough for the ASan suite
  // (with fewer, both recipes misroute most python tokens and the comparison is a coin toss).
  const std::string rest = "calibration: {sequence_length: 256, max_sequences: 128, batch_sequences: 4}\n"
                           "eval: {methods: [dume], max_sequences: 32}\ncompute: {threads: 1}\n";
  const MergeConfig paper = merge_config_parse(bundled_experts() + "output: paper\n" + rest, dir_ / "paper.yaml");
  const MergeConfig recommended =
      merge_config_parse(bundled_experts() + "recipe: recommended\noutput: recommended\n" + rest, dir_ / "recommended.yaml");
  run_merge(paper, false);
  run_merge(recommended, false);
  const EvalResult a = run_eval(paper), b = run_eval(recommended);
  for (const auto& d : a.domains) {
    EXPECT_LT(b.perplexity.at(d).at("dume"), a.perplexity.at(d).at("dume")) << d;
    std::printf("%s: paper %.3f, recommended %.3f\n", d.c_str(), a.perplexity.at(d).at("dume"), b.perplexity.at(d).at("dume"));
  }
}

}  // namespace
