// Inputs and comparison of the kill-and-resume tests (tests/resume/faults.sh, run by ctest
// under mpirun): ResumeInputs writes three experts and one config per scenario into
// DUME_RESUME_DIR, ResumeResults compares every resumed output with the uninterrupted merge.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>

#include "hdf5_util.hpp"
#include "merge.hpp"
#include "merge_compare.hpp"
#include "merge_inputs.hpp"

namespace {

using namespace dume;
namespace fs = std::filesystem;

fs::path resume_dir() {
  const char* dir = std::getenv("DUME_RESUME_DIR");
  if (!dir) throw Error("DUME_RESUME_DIR is not set (ctest sets it)");
  return dir;
}

const char* const kScenarios[] = {"throw",        "kill9",       "kill_root",      "sigterm_job",
                                   "sigterm_ranks", "usr1_job",   "sigint_ranks",   "sigint_driver",
                                   "sigterm_driver", "usr1_driver"};

TEST(ResumeInputs, Write) {
  const fs::path dir = resume_dir();
  fs::remove_all(dir);
  fs::create_directories(dir);
  // 3 domains x 63 batches of 3 sequences; a checkpoint every 2 batches of a rank.
  const std::string base = test::write_merge_inputs(dir, 3, DType::BF16, "OUT", 6000);
  const auto write = [&](const std::string& name, bool checkpoints) {
    std::string yaml = base;
    yaml.replace(yaml.find("OUT"), 3, "out_" + name);
    if (checkpoints) yaml.replace(yaml.find("calibration: {sequence_length"), 14, "calibration: {checkpoint_every: 6, ");
    std::ofstream(dir / (name + ".yaml")) << yaml;
  };
  write("reference", false);
  for (const char* s : kScenarios) write(s, true);
  // Fold-in: d2 into a merge of d0 and d1 (out_fold_base), interrupted (fold_in_usr1) or not.
  std::string two = base;
  two.erase(two.find("  - {name: d2"), two.find("router:") - two.find("  - {name: d2"));
  two.replace(two.find("OUT"), 3, "out_fold_base");
  std::ofstream(dir / "fold_base.yaml") << two;
  const std::string d2 = base.substr(base.find("  - {name: d2"), base.find("router:") - base.find("  - {name: d2"));
  for (const std::string name : {"fold_reference", "fold_in_usr1"})
    std::ofstream(dir / (name + ".yaml")) << "moe: out_fold_base\nexperts:\n" << d2 << "output: out_" << name
                                          << "\ncalibration: {sequence_length: 32, batch_sequences: 3"
                                          << (name == "fold_in_usr1" ? ", checkpoint_every: 6" : "") << "}\n";
}

TEST(ResumeResults, EqualUninterrupted) {
  const fs::path dir = resume_dir();
  int compared = 0;
  double worst = 0;
  for (const char* scenario : kScenarios) {
    const fs::path out = dir / (std::string("out_") + scenario);
    if (!fs::exists(out)) continue;  // that scenario's test did not run
    SCOPED_TRACE(scenario);
    ++compared;
    worst = std::max(worst, test::expect_same_merge(out, dir / "out_reference"));
  }
  if (fs::exists(dir / "out_fold_in_usr1")) {
    SCOPED_TRACE("fold_in_usr1");
    ++compared;
    worst = std::max(worst, test::expect_same_merge(dir / "out_fold_in_usr1", dir / "out_fold_reference"));
  }
  EXPECT_GT(compared, 0);
  std::printf("# %d resumed merges compared with the uninterrupted one: max relative difference of A %.3g\n", compared,
              worst);
}

}  // namespace
