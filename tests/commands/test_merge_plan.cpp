// `dume plan`: the memory plan of a merge before it runs, its refusal of a budget too small, and
// the expected time from a bench file.
#include <gtest/gtest.h>

#include <fstream>

#include "merge_inputs.hpp"
#include "merge_plan.hpp"
#include "resources.hpp"
#include "test_util.hpp"

namespace dume::test {
namespace {

class MergePlanTest : public TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    config_ = merge_config_parse(write_merge_inputs(dir_, 2, DType::F32, "out", 1024), dir_ / "merge.yaml");
  }
  MergeConfig config_;
};

TEST_F(MergePlanTest, FitsTheDefaultBudgetAndSplitsTheWindowsOverRanks) {
  const MemoryPlan one = print_merge_plan(config_, 1, 1, std::nullopt);
  const MemoryPlan four = print_merge_plan(config_, 4, 4, std::nullopt);
  EXPECT_NEAR(static_cast<double>(four.budget) / static_cast<double>(one.budget), 0.25, 1e-6);  // a quarter of the node
  EXPECT_GE(one.chunk_rounds, 1);
  EXPECT_LE(four.peak(), one.peak());
  EXPECT_GT(one.minimum, one.round_bytes);
  EXPECT_FALSE(std::filesystem::exists(dir_ / "out"));  // a plan writes nothing
}

TEST_F(MergePlanTest, ABudgetTooSmallIsRefusedNamingTheSmallestThatWorks) {
  const MemoryPlan plan = print_merge_plan(config_, 1, 1, std::nullopt);
  config_.memory = plan.minimum;
  EXPECT_EQ(print_merge_plan(config_, 1, 1, std::nullopt).chunk_rounds, 1);
  config_.memory = plan.minimum - 1;
  EXPECT_ERROR_WITH(print_merge_plan(config_, 1, 1, std::nullopt), "is too small for this merge: it needs at least " +
                                                                       format_bytes(static_cast<double>(plan.minimum)));
}

TEST_F(MergePlanTest, RatesComeFromABenchFile) {
  const auto bench = dir_ / "bench.json";
  std::ofstream(bench) << R"({"ranks": 2, "phases": [{"phase": "forward+statistics", "unit": "GFLOP/s", "measured": 20}]})";
  print_merge_plan(config_, 2, 2, bench);
  std::ofstream(dir_ / "other.json") << R"({"ranks": 1, "phases": []})";
  EXPECT_ERROR_WITH(print_merge_plan(config_, 1, 1, dir_ / "other.json"), "other.json: no forward+statistics rate");
  std::ofstream(dir_ / "broken.json") << "{";
  EXPECT_ERROR_WITH(print_merge_plan(config_, 1, 1, dir_ / "broken.json"), "broken.json: not a `dume bench --json` file");
}

}  // namespace
}  // namespace dume::test
