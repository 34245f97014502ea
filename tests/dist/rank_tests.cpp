// The same merge on 1, 2, 3 and 4 ranks and the same eval on 1 and 2 (ctest runs mpirun
// between the steps here): RankInputs writes the experts and configs, RankResults compares.
// Likewise the same merge on grids of stages x replicas: StageInputs, StageResults; StageVerify
// runs under mpirun itself. All work in the directory named by DUME_RANK_DIR.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <limits>
#include <optional>
#include <nlohmann/json.hpp>

#include "comm.hpp"
#include "hdf5_util.hpp"
#include "merge.hpp"
#include "merge_compare.hpp"
#include "merge_inputs.hpp"
#include "verify.hpp"

namespace {

using namespace dume;
namespace fs = std::filesystem;

fs::path rank_dir() {
  const char* dir = std::getenv("DUME_RANK_DIR");
  if (!dir) throw Error("DUME_RANK_DIR is not set (ctest sets it)");
  return dir;
}

// The grid tests' directory, beside the rank tests' (which RankInputs empties).
fs::path stage_dir() { return rank_dir().parent_path() / "stages"; }

// Two eval.json files of the same evaluation: every method's perplexity on every domain within
// `tolerance` (relative), 3 domains x (3 experts, average, random, oracle, dume).
void expect_same_eval(const fs::path& a, const fs::path& b, double tolerance) {
  const auto one = nlohmann::json::parse(std::ifstream(a));
  const auto two = nlohmann::json::parse(std::ifstream(b));
  std::size_t compared = 0;
  for (const auto& [domain, methods] : one["perplexity"].items())
    for (const auto& [method, value] : methods.items()) {
      const double x = value.get<double>(), y = two["perplexity"][domain][method].get<double>();
      EXPECT_LE(std::abs(x - y), tolerance * std::abs(x)) << domain << " " << method;
      ++compared;
    }
  EXPECT_EQ(compared, 3u * 7u);
  EXPECT_EQ(one["routing"], two["routing"]);
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
  expect_same_eval(dir / "out1" / "eval" / "eval.json", dir / "out2" / "eval" / "eval.json", 1e-9);
}

// Five layers, so that 2, 3 and 4 stages hold unequal numbers of them; held-out tokens and
// auto router settings, so that each stage's lambdas and held-out logits travel to rank 0.
TEST(StageInputs, Write) {
  const fs::path dir = stage_dir();
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::string base = test::write_merge_inputs(dir, 3, DType::BF16, "OUT", 6000, /*layers=*/5);
  base.insert(base.find("batch_sequences: 3") + 18, ", heldout_fraction: 0.2, checkpoint_minutes: 0");
  base.replace(base.find("lambda: 0.01"), 12, "lambda: auto, temperature: auto");
  for (const std::string grid : {"1x1", "1x2", "2x1", "2x2", "3x1", "3x2", "4x1"}) {
    std::string yaml = base;
    yaml.replace(yaml.find("OUT"), 3, "out" + grid);
    if (grid == "2x2") yaml += "parallel: {stages: 2}\n";  // the others by --stages
    std::ofstream(dir / ("g" + grid + ".yaml")) << yaml;
  }
  // The same eval of out1x1 on one rank and on two stages.
  for (const std::string grid : {"1x1", "2x1"}) {
    std::string yaml = base;
    yaml.replace(yaml.find("OUT"), 3, "out1x1");
    std::ofstream(dir / ("e" + grid + ".yaml")) << yaml << "eval: {output: eval" << grid << "}\n";
  }
  // Fold-in, remove and resolve by stages: a two-domain MoE, d2 folded into it.
  std::string two = base;
  two.erase(two.find("  - {name: d2"), two.find("\n", two.find("  - {name: d2")) - two.find("  - {name: d2") + 1);
  two.replace(two.find("OUT"), 3, "outbase");
  std::ofstream(dir / "base.yaml") << two;
  const std::string d2 = base.substr(base.find("  - {name: d2"), base.find("\n", base.find("  - {name: d2")) - base.find("  - {name: d2") + 1);
  for (const std::string grid : {"1x1", "2x1"})
    std::ofstream(dir / ("fold" + grid + ".yaml"))
        << "moe: outbase\nexperts:\n" << d2 << "calibration: {sequence_length: 32, batch_sequences: 3, heldout_fraction: 0.2, "
        << "checkpoint_minutes: 0}\ncompute: {threads: 1}\noutput: outfold" << grid << "\n";
}

TEST(StageResults, Agree) {
  const fs::path dir = stage_dir();
  const MoeInfo reference = read_moe_info(dir / "out1x1");
  ASSERT_EQ(reference.router.layer_lambda.size(), 5u);
  for (const std::string grid : {"1x2", "2x1", "2x2", "3x1", "3x2", "4x1"}) {
    SCOPED_TRACE("grid " + grid);
    const fs::path out = dir / ("out" + grid);
    test::expect_same_merge(out, dir / "out1x1");
    const MoeInfo info = read_moe_info(out);
    ASSERT_EQ(info.router.layer_lambda.size(), reference.router.layer_lambda.size());
    for (std::size_t l = 0; l < info.router.layer_lambda.size(); ++l)  // candidates scale with A's eigenvalues
      EXPECT_LE(std::abs(info.router.layer_lambda[l] - reference.router.layer_lambda[l]),
                1e-9 * reference.router.layer_lambda[l]) << "layer " << l;
    EXPECT_LE(std::abs(info.router.temperature - reference.router.temperature), 1e-9 * reference.router.temperature);
    // Stages alone change no sum: one replica per stage gives 1x1's statistics exactly.
    const int stages = grid[0] - '0';
    if (grid[2] == '1') {
      const Statistics a = read_statistics(out / "stats.h5"), b = read_statistics(dir / "out1x1" / "stats.h5");
      for (std::size_t e = 0; e < a.domains.size(); ++e)
        for (std::size_t l = 0; l < a.domains[e].A.size(); ++l)
          EXPECT_TRUE(a.domains[e].A[l] == b.domains[e].A[l]) << "domain " << e << " layer " << l;
    }
    // Every rank that solved layers (a replica of a stage with fewer layers than replicas solves
    // none) wrote their shards and statistics file.
    if (stages > 1) {
      const std::vector<std::int64_t> first = stage_layers(info.config, static_cast<std::int64_t>(info.experts.size()), stages);
      std::int64_t writers = 0;
      for (int s = 0; s < stages; ++s) writers += std::min<std::int64_t>(grid[2] - '0', first[s + 1] - first[s]);
      EXPECT_GE(info.shard_files.size(), static_cast<std::size_t>(writers));
      for (std::int64_t r = 1; r <= writers; ++r) {
        char name[64];
        std::snprintf(name, sizeof name, "stats-%05lld-of-%05lld.h5", static_cast<long long>(r), static_cast<long long>(writers));
        EXPECT_TRUE(fs::exists(out / name)) << name;
      }
    }
  }
}

// Every method's perplexity and the routing on two stages, against one rank.
TEST(StageResults, EvalAgrees) {
  expect_same_eval(stage_dir() / "eval1x1" / "eval.json", stage_dir() / "eval2x1" / "eval.json", 1e-12);
}

// Fold-in (2x1), remove (3x1) and resolve (2x1) by stages against the same on one rank.
TEST(StageResults, EditsAgree) {
  const fs::path dir = stage_dir();
  for (const std::string job : {"fold", "remove", "resolve"}) {
    SCOPED_TRACE(job);
    test::expect_same_merge(dir / ("out" + job + (job == "remove" ? "3x1" : "2x1")), dir / ("out" + job + "1x1"));
  }
}

// dume export of one MoE on one rank and on a 2 x 2 grid: the same files, byte for byte.
TEST(StageResults, ExportsAgree) {
  const fs::path one = stage_dir() / "export1x1", grid = stage_dir() / "export2x2";
  std::size_t files = 0;
  for (const auto& entry : fs::directory_iterator(one)) {
    SCOPED_TRACE(entry.path().filename().string());
    const auto read = [](const fs::path& p) { return std::string(std::istreambuf_iterator<char>(std::ifstream(p, std::ios::binary).rdbuf()), {}); };
    EXPECT_TRUE(read(entry.path()) == read(grid / entry.path().filename()));
    ++files;
  }
  EXPECT_GT(files, 4u);  // several shards, their index, config.json, dume_export.json
  EXPECT_EQ(files, static_cast<std::size_t>(std::distance(fs::directory_iterator(grid), fs::directory_iterator())));
}

// dume verify on 3 ranks, as 3 stages and as 3 replicas: the same datasets checked as on one,
// and problems found on the ranks that hold them (a non-finite router of the last layer, a
// changed norm in the middle that only the hash, passed from rank to rank, can see).
TEST(StageVerify, GridsCheckEveryDatasetAndFindDamageOnAnyRank) {
  ASSERT_EQ(mpi_size(), 3);
  const fs::path good = stage_dir() / "out3x1", damaged = stage_dir() / "verify-damaged";
  if (mpi_rank() == 0) {
    fs::remove_all(damaged);
    fs::copy(good, damaged);
    const H5Id index(H5Fopen((damaged / "moe.h5").c_str(), H5F_ACC_RDWR, H5P_DEFAULT));
    const auto overwrite = [&](const std::string& path, std::size_t at, float value) {
      std::vector<float> values = h5::read_f32(index.get(), path, h5::dataset_info(index.get(), path).shape);
      values.at(at) = value;
      const H5Id dataset(H5Dopen2(index.get(), path.c_str(), H5P_DEFAULT));
      ASSERT_GE(H5Dwrite(dataset.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()), 0);
    };
    overwrite("/layers/4/router/weight", 5, std::numeric_limits<float>::infinity());
    overwrite("/layers/2/input_layernorm", 0, 2.0f);
  }
  barrier();
  std::optional<std::size_t> datasets;
  for (const int stages : {3, 1}) {
    SCOPED_TRACE("stages " + std::to_string(stages));
    const VerifyReport report = verify_moe(good, stages), broken = verify_moe(damaged, stages);
    if (mpi_rank() != 0) continue;
    EXPECT_TRUE(report.ok()) << report.problems.front();
    if (datasets) {
      EXPECT_EQ(report.datasets, *datasets);
    }
    datasets = report.datasets;
    std::string problems;
    for (const auto& p : broken.problems) problems += p + "\n";
    EXPECT_EQ(broken.problems.size(), 2u) << problems;
    EXPECT_NE(problems.find("dataset '/layers/4/router/weight' holds a non-finite value at flat index 5"), std::string::npos)
        << problems;
    EXPECT_NE(problems.find("moe.h5: the stored shared weights hash to"), std::string::npos) << problems;
  }
  barrier();
  if (mpi_rank() == 0) fs::remove_all(damaged);
}

}  // namespace
