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
  // The plan on `ranks` ranks, all on one node.
  MemoryPlan plan(int ranks, const std::optional<std::filesystem::path>& rates = std::nullopt) {
    return print_merge_plan(config_, merge_prepare(config_), ranks, ranks, rates);
  }
  MergeConfig config_;
};

TEST_F(MergePlanTest, FitsTheDefaultBudgetAndSplitsTheWindowsOverRanks) {
  const MemoryPlan one = plan(1);
  const MemoryPlan four = plan(4);
  EXPECT_NEAR(static_cast<double>(four.budget) / static_cast<double>(one.budget), 0.25, 1e-6);  // a quarter of the node
  EXPECT_GE(one.chunk_rounds, 1);
  EXPECT_LE(four.peak(), one.peak());
  EXPECT_GT(one.minimum, one.round_bytes);
  EXPECT_FALSE(std::filesystem::exists(dir_ / "out"));  // a plan writes nothing
}

TEST_F(MergePlanTest, ABudgetTooSmallIsRefusedNamingTheSmallestThatWorks) {
  const MemoryPlan one = plan(1);
  config_.memory = one.minimum;
  EXPECT_EQ(plan(1).chunk_rounds, 1);
  config_.memory = one.minimum - 1;
  EXPECT_ERROR_WITH(plan(1), "is too small for this merge: it needs at least " + format_bytes(static_cast<double>(one.minimum)));
}

TEST_F(MergePlanTest, RatesComeFromABenchFile) {
  const auto bench = dir_ / "bench.json";
  std::ofstream(bench) << R"({"ranks": 2, "phases": [{"phase": "forward+statistics", "unit": "GFLOP/s", "measured": 20}]})";
  plan(2, bench);
  std::ofstream(dir_ / "other.json") << R"({"ranks": 1, "phases": []})";
  EXPECT_ERROR_WITH(plan(1, dir_ / "other.json"), "other.json: no forward+statistics rate");
  std::ofstream(dir_ / "broken.json") << "{";
  EXPECT_ERROR_WITH(plan(1, dir_ / "broken.json"), "broken.json: not a `dume bench --json` file");
}

// With periodic checkpoints one stage holds a whole domain's statistics, and each of two stages
// only its own layers' (packed): a budget that fits two stages and not one names two.
TEST_F(MergePlanTest, StagesHoldTheirOwnLayersStatisticsAndTheFewestThatFitAreNamed) {
  const MergeInputs in = merge_prepare(config_);
  config_.stages = 2;
  const MemoryPlan two = print_merge_plan(config_, in, 2, 2, std::nullopt);
  config_.memory = two.minimum;
  EXPECT_EQ(print_merge_plan(config_, in, 2, 2, std::nullopt).minimum, two.minimum);
  config_.stages = 1;
  EXPECT_ERROR_WITH(print_merge_plan(config_, in, 2, 2, std::nullopt), "is too small for this merge");
  EXPECT_EQ(smallest_grid(config_, in, 2, 2), 2);
  config_.memory = two.minimum - 1;
  EXPECT_EQ(smallest_grid(config_, in, 2, 2), std::nullopt);
  config_.stages = 3;
  EXPECT_ERROR_WITH(print_merge_plan(config_, in, 2, 2, std::nullopt), "parallel.stages 3 does not divide the job's 2 ranks");
}

}  // namespace
}  // namespace dume::test
