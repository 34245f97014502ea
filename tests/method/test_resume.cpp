// Checkpoints of a merge's calibration (pipeline/method/resume.hpp): the store's save/load and its
// refusals, and in-process merges stopped by a signal and resumed, compared with an
// uninterrupted merge. Multi-rank kills and resumes run under mpirun (tests/resume/).
#include <gtest/gtest.h>

#include <cstdlib>
#include <random>

#include "comm.hpp"
#include "hdf5_util.hpp"
#include "merge.hpp"
#include "merge_inputs.hpp"
#include "resume.hpp"
#include "test_util.hpp"

namespace dume::test {
namespace {

ResumeIdentity identity() {
  ResumeIdentity id;
  id.config = "c0ffee";
  id.shared_hash = "5ad";
  id.hidden_size = 3;
  id.context_tokens = 8;
  id.layers = 2;
  id.batch_sequences = 4;
  return id;
}

// Partial statistics with random upper triangles (the lower ones unused, as in calibration).
DomainStatistics partial(std::uint64_t seed, std::int64_t tokens) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  DomainStatistics d;
  d.name = "code";
  d.tokens = tokens;
  for (int l = 0; l < 2; ++l) {
    MatrixXdRow& A = d.A.emplace_back(4, 4);
    for (Eigen::Index i = 0; i < A.size(); ++i) A.data()[i] = normal(rng);
  }
  return d;
}

class ResumeStoreTest : public TempDirTest {
 protected:
  ResumeStore store(ResumeIdentity id = identity()) const {
    return ResumeStore(dir_ / "out.checkpoint", std::move(id), {"code", "prose"}, {10, 7});
  }
};

TEST_F(ResumeStoreTest, CheckpointDirIsASiblingOfTheOutput) {
  EXPECT_EQ(checkpoint_dir("runs/out"), fs::path("runs/out.checkpoint"));
  EXPECT_EQ(checkpoint_dir("runs/out/"), fs::path("runs/out.checkpoint"));
  EXPECT_EQ(checkpoint_dir("/abs/moe"), fs::path("/abs/moe.checkpoint"));
}

TEST_F(ResumeStoreTest, PartialsOfRanksAndRunsAddUp) {
  ResumeStore s = store();
  EXPECT_EQ(s.next_generation(), 0);
  EXPECT_TRUE(s.load(0).batches.empty());
  const DomainStatistics a = partial(1, 24), b = partial(2, 16), c = partial(3, 8);
  s.save_partial(0, 0, {0, 2, 4}, packed_sums(partial(9, 99)));  // replaced by the next save of rank 0
  s.save_partial(0, 0, {4, 0, 2}, packed_sums(a));
  s.save_partial(0, 1, {1, 3}, packed_sums(b));
  EXPECT_EQ(s.next_generation(), 1);
  s.set_generation(1);  // a resumed run on other ranks
  s.save_partial(0, 0, {5}, packed_sums(c));
  const SavedDomain saved = s.load(0);
  EXPECT_FALSE(saved.complete);
  EXPECT_EQ(saved.batches, (std::vector<std::int64_t>{0, 1, 2, 3, 4, 5}));
  const auto pa = pack_upper(a), pb = pack_upper(b), pc = pack_upper(c);
  ASSERT_EQ(saved.packed.size(), pa.size());
  for (std::size_t i = 0; i < pa.size(); ++i) EXPECT_DOUBLE_EQ(saved.packed[i], pa[i] + pb[i] + pc[i]) << i;
  EXPECT_EQ(saved.packed.back(), 48.0);  // tokens
  EXPECT_TRUE(s.load(1).batches.empty());
  for (const auto& entry : fs::directory_iterator(s.dir()))
    EXPECT_EQ(entry.path().extension(), ".h5") << "temporary left: " << entry.path();

  // A complete domain replaces its partial files.
  DomainStatistics whole = partial(4, 40);
  s.save_complete(0, whole);
  const SavedDomain complete = s.load(0);
  EXPECT_TRUE(complete.complete);
  EXPECT_EQ(complete.batches.size(), 10u);
  DomainStatistics back = partial(5, 0);
  unpack_upper(complete.packed, back);
  symmetrize(whole.A[1]);
  EXPECT_EQ(back.A[1], whole.A[1]);
  EXPECT_EQ(back.tokens, 40);
  EXPECT_EQ(std::distance(fs::directory_iterator(s.dir()), fs::directory_iterator()), 1);
  s.remove();
  EXPECT_FALSE(fs::exists(s.dir()));
}

TEST_F(ResumeStoreTest, RefusesACheckpointOfAnotherMerge) {
  store().save_partial(1, 0, {0, 1}, packed_sums(partial(1, 8)));
  const auto refused = [&](ResumeIdentity id, const std::string& what) {
    SCOPED_TRACE(what);
    EXPECT_ERROR_WITH(store(std::move(id)).load(1), "checkpoint of a different merge", what, "remove ");
  };
  ResumeIdentity id = identity();
  id.shared_hash = "other";
  refused(id, "shared-weight hash 5ad there, other here");
  id = identity();
  id.config = "beef";
  refused(id, "configuration/corpora hash");
  id = identity();
  id.context_tokens = 16;
  refused(id, "context_tokens 8 there, 16 here");
  id = identity();
  id.batch_sequences = 2;
  refused(id, "batch_sequences");
  // Another domain's file under this domain's name.
  fs::rename(store().dir() / "domain-1.g0.rank0.h5", store().dir() / "domain-0.g0.rank0.h5");
  EXPECT_ERROR_WITH(store().load(0), "domain_index 1 there, 0 here");
}

TEST_F(ResumeStoreTest, RefusesOverlapsAndBrokenFiles) {
  ResumeStore s = store();
  s.save_partial(0, 0, {0, 1}, packed_sums(partial(1, 8)));
  s.save_partial(0, 1, {1, 2}, packed_sums(partial(2, 8)));
  EXPECT_ERROR_WITH(s.load(0), "batch 1 of domain 'code' is in two checkpoint files");
  s.save_partial(1, 0, {7}, packed_sums(partial(1, 8)));
  EXPECT_ERROR_WITH(s.load(1), "batch 7 out of range (domain 'prose' has 7)");
  const fs::path file = s.dir() / "domain-1.g0.rank0.h5";
  fs::resize_file(file, fs::file_size(file) / 2);
  EXPECT_ERROR_WITH(s.load(1), "domain-1.g0.rank0.h5", "cannot open as HDF5");
  {
    H5Id f = h5::create_file(s.dir() / "domain-1.h5");
  }
  EXPECT_ERROR_WITH(s.load(1), "not a dume checkpoint");
}

TEST_F(ResumeStoreTest, ConfigKey) {
  const std::string yaml = "experts:\n  - {name: a, checkpoint: a, calibration: {path: a.bin}}\noutput: out\n";
  EXPECT_EQ(merge_config_parse(yaml, dir_ / "m.yaml").calibration.checkpoint_every, 0);
  EXPECT_EQ(merge_config_parse(yaml + "calibration: {checkpoint_every: 64}\n", dir_ / "m.yaml").calibration.checkpoint_every,
            64);
  EXPECT_ERROR_WITH(merge_config_parse(yaml + "calibration:\n  checkpoint_every: -1\n", dir_ / "m.yaml"), "m.yaml:5:",
                    "calibration.checkpoint_every must be >= 0");
  EXPECT_ERROR_WITH(merge_config_parse(yaml + "calibration: {checkpoint_every: often}\n", dir_ / "m.yaml"),
                    "calibration.checkpoint_every must be an integer");
}

TEST_F(ResumeStoreTest, KilledWritersTemporariesAreRemoved) {
  fs::create_directories(dir_ / ".out.tmp-12345" / "half");
  fs::create_directories(dir_ / ".other.tmp-12345");
  write_output_atomically(dir_ / "out", false, [](const fs::path& d) { std::ofstream(d / "moe.h5") << "x"; });
  EXPECT_TRUE(fs::exists(dir_ / "out" / "moe.h5"));
  EXPECT_FALSE(fs::exists(dir_ / ".out.tmp-12345"));
  EXPECT_TRUE(fs::exists(dir_ / ".other.tmp-12345"));  // another output's
}

// One rank in this process: a merge stopped by SIGTERM (raised by the test hook) saves and
// throws JobStopped; --resume finishes it equal to an uninterrupted merge.
class ResumeMergeTest : public TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    yaml_ = write_merge_inputs(dir_, 2, DType::BF16, "OUT", 2000);
  }
  MergeConfig config(const std::string& output, const std::string& extra = "checkpoint_every: 6, ") const {
    std::string yaml = yaml_;
    yaml.replace(yaml.find("OUT"), 3, output);
    yaml.replace(yaml.find("calibration: {sequence_length"), 14, "calibration: {" + extra);
    return merge_config_parse(yaml, dir_ / "merge.yaml");
  }
  // Runs a merge that the hook stops after `batches` batches of this job.
  void stopped_merge(const MergeConfig& c, int batches, bool resume = false) {
    setenv("DUME_TEST_FAULT", ("0:" + std::to_string(batches) + ":term").c_str(), 1);
    EXPECT_ERROR_WITH(run_merge(c, false, resume), "stopped by SIGTERM while calibrating domain",
                      "checkpoint saved in " + checkpoint_dir(c.output.path).string(), "--resume");
    unsetenv("DUME_TEST_FAULT");
    EXPECT_FALSE(fs::exists(c.output.path));
    EXPECT_TRUE(fs::is_directory(checkpoint_dir(c.output.path)));
  }
  static void expect_same_statistics(const fs::path& a, const fs::path& b) {
    const Statistics x = read_statistics(a / "stats.h5"), y = read_statistics(b / "stats.h5");
    ASSERT_EQ(x.domains.size(), y.domains.size());
    for (std::size_t e = 0; e < x.domains.size(); ++e) {
      EXPECT_EQ(x.domains[e].tokens, y.domains[e].tokens);
      for (std::size_t l = 0; l < x.domains[e].A.size(); ++l) {
        const auto& r = y.domains[e].A[l];
        EXPECT_LE((x.domains[e].A[l] - r).cwiseAbs().maxCoeff(), 1e-9 * r.cwiseAbs().maxCoeff()) << e << " " << l;
      }
    }
  }
  std::string yaml_;
};

TEST_F(ResumeMergeTest, StoppedTwiceThenResumedEqualsUninterrupted) {
  ASSERT_EQ(mpi_size(), 1);
  run_merge(config("reference", ""), false);
  const MergeConfig c = config("out");
  // 2 domains x 21 batches of 3 sequences; the first stop is in domain 0, the second in domain 1.
  stopped_merge(c, 5);
  EXPECT_ERROR_WITH(run_merge(c, false), "holds the checkpoint of an interrupted job", "--resume", "--force");
  stopped_merge(c, 20, /*resume=*/true);
  EXPECT_TRUE(fs::exists(checkpoint_dir(c.output.path) / "domain-0.h5"));
  // Another merge's settings are refused, naming what differs.
  EXPECT_ERROR_WITH(run_merge(config("out", "checkpoint_every: 6, batch_sequences: 2, "), false, true),
                    "checkpoint of a different merge (batch_sequences 3 there, 2 here)");
  run_merge(c, false, true);
  EXPECT_FALSE(fs::exists(checkpoint_dir(c.output.path)));
  expect_same_statistics(dir_ / "out", dir_ / "reference");
}

TEST_F(ResumeMergeTest, StopWithoutPeriodicCheckpointsSavesToo) {
  const MergeConfig c = config("out", "");
  stopped_merge(c, 30);  // in domain 1: domain 0 is saved whole, domain 1 in part
  EXPECT_TRUE(fs::exists(checkpoint_dir(c.output.path) / "domain-0.h5"));
  EXPECT_TRUE(fs::exists(checkpoint_dir(c.output.path) / "domain-1.g0.rank0.h5"));
  run_merge(c, false, true);
  run_merge(config("reference", ""), false);
  expect_same_statistics(dir_ / "out", dir_ / "reference");
  // --force without --resume discards a checkpoint.
  const MergeConfig again = config("again", "");
  stopped_merge(again, 3);
  run_merge(again, true);
  EXPECT_FALSE(fs::exists(checkpoint_dir(again.output.path)));
}

// Without periodic checkpoints each domain runs in one pass, layer by layer: a stop is agreed
// between layers, the domains before are saved whole, and the one in progress starts over.
TEST_F(ResumeMergeTest, AStopInAOnePassDomainRestartsIt) {
  const MergeConfig c = config("out", "checkpoint_minutes: 0, ");
  stopped_merge(c, 3);  // the hook counts a one-pass domain's batches once it is done: domain 1 stops
  EXPECT_TRUE(fs::exists(checkpoint_dir(c.output.path) / "domain-0.h5"));
  for (const auto& entry : fs::directory_iterator(checkpoint_dir(c.output.path)))
    EXPECT_EQ(entry.path().filename().string().find(".rank"), std::string::npos) << entry.path();
  run_merge(c, false, true);
  run_merge(config("reference", ""), false);
  expect_same_statistics(dir_ / "out", dir_ / "reference");
}

}  // namespace
}  // namespace dume::test
