// Inputs and comparison of the kill-and-resume tests (tests/resume/faults.sh, run by ctest
// under mpirun): ResumeInputs writes three experts and one config per scenario into
// DUME_RESUME_DIR, ResumeResults compares every resumed output with the uninterrupted merge.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>

#include "hdf5_util.hpp"
#include "merge.hpp"
#include "merge_inputs.hpp"

namespace {

using namespace dume;
namespace fs = std::filesystem;

fs::path resume_dir() {
  const char* dir = std::getenv("DUME_RESUME_DIR");
  if (!dir) throw Error("DUME_RESUME_DIR is not set (ctest sets it)");
  return dir;
}

const char* const kScenarios[] = {"throw", "kill9", "kill_root", "sigterm_job", "sigterm_ranks", "usr1_job"};

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
}

TEST(ResumeResults, EqualUninterrupted) {
  const fs::path dir = resume_dir();
  const fs::path reference = dir / "out_reference";
  const Statistics ref = read_statistics(reference / "stats.h5");
  const MoeInfo info = read_moe_info(reference);
  const H5Id ref_file = h5::open_file(reference / "moe.h5");
  int compared = 0;
  double worst = 0;
  for (const char* scenario : kScenarios) {
    const fs::path out = dir / (std::string("out_") + scenario);
    if (!fs::exists(out)) continue;  // that scenario's test did not run
    SCOPED_TRACE(scenario);
    ++compared;
    const Statistics stats = read_statistics(out / "stats.h5");
    ASSERT_EQ(stats.domains.size(), ref.domains.size());
    EXPECT_EQ(stats.shared_hash, ref.shared_hash);
    for (std::size_t e = 0; e < stats.domains.size(); ++e) {
      EXPECT_EQ(stats.domains[e].tokens, ref.domains[e].tokens);
      for (std::size_t l = 0; l < stats.domains[e].A.size(); ++l) {
        const auto& r = ref.domains[e].A[l];
        const double rel = (stats.domains[e].A[l] - r).cwiseAbs().maxCoeff() / r.cwiseAbs().maxCoeff();
        worst = std::max(worst, rel);
        EXPECT_LE(rel, 1e-9) << "domain " << e << " layer " << l;
      }
    }
    const H5Id file = h5::open_file(out / "moe.h5");
    const std::int64_t E = 3, D = info.config.hidden_size;
    for (std::int64_t l = 0; l < info.config.num_layers; ++l) {
      const RouterSolution a = ridge_solve(stats.total_A(l), stats.B(l), info.router.lambda, true, l);
      const RouterSolution b = ridge_solve(ref.total_A(l), ref.B(l), info.router.lambda, true, l);
      EXPECT_LE((a.weight - b.weight).cwiseAbs().maxCoeff() / b.weight.cwiseAbs().maxCoeff(), 1e-9);
      const std::int64_t shape[] = {E, D};
      const auto stored = h5::read_f32(file.get(), moe_path::layer(l, "router/weight"), shape);
      const auto stored_ref = h5::read_f32(ref_file.get(), moe_path::layer(l, "router/weight"), shape);
      for (std::size_t i = 0; i < stored.size(); ++i)
        EXPECT_LE(std::abs(stored[i] - stored_ref[i]), 6e-8f * std::abs(stored_ref[i])) << i;
      for (std::int64_t e = 0; e < E; ++e)
        EXPECT_EQ(h5::read_raw(file.get(), moe_path::expert(l, e, "down_proj")),
                  h5::read_raw(ref_file.get(), moe_path::expert(l, e, "down_proj")));
    }
    EXPECT_EQ(h5::read_raw(file.get(), "/embed_tokens"), h5::read_raw(ref_file.get(), "/embed_tokens"));
  }
  EXPECT_GT(compared, 0);
  std::printf("# %d resumed merges compared with the uninterrupted one: max relative difference of A %.3g\n", compared,
              worst);
}

}  // namespace
