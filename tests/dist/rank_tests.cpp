// The same merge on 1, 2, 3 and 4 ranks and the same eval on 1 and 2 (ctest runs mpirun
// between the steps here): RankInputs writes the experts and configs, RankResults compares.
// Both work in the directory named by DUME_RANK_DIR.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>

#include "hdf5_util.hpp"
#include "merge.hpp"
#include "merge_compare.hpp"
#include "merge_inputs.hpp"

namespace {

using namespace dume;
namespace fs = std::filesystem;

fs::path rank_dir() {
  const char* dir = std::getenv("DUME_RANK_DIR");
  if (!dir) throw Error("DUME_RANK_DIR is not set (ctest sets it)");
  return dir;
}

TEST(RankInputs, Write) {
  const fs::path dir = rank_dir();
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::string base = test::write_merge_inputs(dir, 3, DType::BF16, "OUT", 6000);
  // A held-out split too: its rows are gathered from the ranks that computed them.
  base.insert(base.find("batch_sequences: 3") + 18, ", heldout_fraction: 0.2");
  for (int np = 1; np <= 4; ++np) {
    std::string yaml = base;
    yaml.replace(yaml.find("OUT"), 3, "out" + std::to_string(np));
    // Even rank counts calibrate each domain in one pass (no periodic checkpoints), odd ones in
    // chunks: RankResults compares both.
    if (np % 2 == 0) yaml.insert(yaml.find("batch_sequences: 3") + 18, ", checkpoint_minutes: 0");
    std::ofstream(dir / ("np" + std::to_string(np) + ".yaml")) << yaml;
  }
}

TEST(RankResults, Agree) {
  const fs::path dir = rank_dir();
  for (int np = 2; np <= 4; ++np) {
    SCOPED_TRACE("ranks " + std::to_string(np));
    test::expect_same_merge(dir / ("out" + std::to_string(np)), dir / "out1");
  }
}

TEST(RankResults, EvalAgrees) {
  const fs::path dir = rank_dir();
  const auto one = nlohmann::json::parse(std::ifstream(dir / "out1" / "eval" / "eval.json"));
  const auto two = nlohmann::json::parse(std::ifstream(dir / "out2" / "eval" / "eval.json"));
  std::size_t compared = 0;
  for (const auto& [domain, methods] : one["perplexity"].items())
    for (const auto& [method, value] : methods.items()) {
      const double a = value.get<double>(), b = two["perplexity"][domain][method].get<double>();
      EXPECT_LE(std::abs(a - b), 1e-9 * std::abs(a)) << domain << " " << method;
      ++compared;
    }
  EXPECT_EQ(compared, 3u * 7u);  // 3 domains x (3 experts, average, random, oracle, dume)
  EXPECT_EQ(one["routing_accuracy"], two["routing_accuracy"]);
}

}  // namespace
