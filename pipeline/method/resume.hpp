// Checkpoints of a merge's calibration, so that a killed or stopped job resumes instead of
// starting over (`dume merge --resume`), on any number of ranks.
//
// The directory <output>.checkpoint (a sibling of the output, never inside it) holds HDF5 files,
// each written to a temporary name and renamed into place:
//   domain-<d>.h5                 domain d complete (rank 0, after its reduction)
//   domain-<d>.g<G>.rank<r>.h5    rank r's partial sums of domain d in run number G
// A file records which global batches (see calibrate_domain) its sums hold; every batch is in
// at most one file, since a run only ever rewrites its own files and a resumed run starts a new
// G. On resume rank 0 adds up the files of each domain once and the batches in none of them are
// shared out over the new ranks. Every file carries the identity of the merge (configuration,
// corpora, shared-weight hash, sizes) and is refused when it differs.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "corpus.hpp"
#include "merge_config.hpp"
#include "statistics.hpp"

namespace dume {

// What a checkpoint must agree on with the job that loads it.
struct ResumeIdentity {
  std::string config;        // hash of the settings and corpora that change the statistics
  std::string shared_hash;   // of the shared weights
  std::int64_t hidden_size = 0, context_tokens = 0, layers = 0, batch_sequences = 0;
};

// The identity of a merge with these settings, shared weights and calibration windows (one per domain).
ResumeIdentity resume_identity(const MergeConfig& config, const std::string& shared_hash, std::int64_t hidden_size,
                               std::int64_t layers, const std::vector<const CorpusWindows*>& windows);

// What is saved of one domain.
struct SavedDomain {
  bool complete = false;
  std::vector<std::int64_t> batches;  // sorted global batch indices held (all of them when complete)
  std::vector<double> packed;         // their summed statistics (pack_upper); empty when none
};

class ResumeStore {
 public:
  // `domains`: names in calibration order, and each one's number of batches.
  ResumeStore(std::filesystem::path dir, ResumeIdentity identity, std::vector<std::string> domains,
              std::vector<std::int64_t> batches);

  const std::filesystem::path& dir() const { return dir_; }
  // The run number of this job: one above every run whose files are present.
  int next_generation() const;
  void set_generation(int generation) { generation_ = generation; }

  // This rank's partial statistics of domain d: replaces its previous save of this run.
  void save_partial(std::size_t d, int rank, const std::vector<std::int64_t>& batches, const PackedSums& partial) const;
  // Domain d's reduced statistics; its partial files are removed after.
  void save_complete(std::size_t d, const DomainStatistics& reduced) const;
  bool has_complete(std::size_t d) const;
  // Reads and checks every file of domain d and sums their statistics (call on one rank).
  SavedDomain load(std::size_t d) const;
  void remove() const;

 private:
  void write(const std::filesystem::path& file, std::size_t d, const std::vector<std::int64_t>& batches,
             const PackedSums& sums) const;
  std::vector<std::int64_t> read(const std::filesystem::path& file, std::size_t d, std::vector<double>& sum) const;

  std::filesystem::path dir_;
  ResumeIdentity identity_;
  std::vector<std::string> domains_;
  std::vector<std::int64_t> batches_;
  int generation_ = 0;
};

// <output>.checkpoint beside the output.
std::filesystem::path checkpoint_dir(const std::filesystem::path& output);

// Test hook, called after each calibration batch with the number this rank has run in this job:
// DUME_TEST_FAULT="RANK:BATCHES:ACTION" makes rank RANK, after running BATCHES batches, throw
// (ACTION throw), raise SIGKILL (kill), or raise SIGTERM / SIGUSR1 (term, usr1) on itself;
// DUME_TEST_BATCH_DELAY_MS=N sleeps N ms after every batch, so that a test can kill a job while
// it runs.
void test_fault_after_batch(int rank, std::int64_t batches);

}  // namespace dume
