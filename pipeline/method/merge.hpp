// `dume merge` as an MPI job: checks, shared weights, per-domain statistics with each
// expert forced, reduction, ridge solve on rank 0, and the HDF5 MoE written atomically.
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "grid.hpp"
#include "hf_checkpoint.hpp"
#include "merge_config.hpp"
#include "moe_file.hpp"
#include "outputs.hpp"
#include "rank_backend.hpp"
#include "resume.hpp"
#include "routers.hpp"
#include "shared_weights.hpp"
#include "corpus_loader.hpp"

namespace dume {

// The opened and checked inputs of a merge.
struct MergeInputs {
  std::vector<HfCheckpoint> experts;
  std::vector<CorpusWindows> calibration;  // one per expert, its domain's windows
  std::vector<CorpusReport> reports;        // one per expert: documents read and tokenized
  DType dtype = DType::BF16;               // of the stored MoE
};

// An expert's calibration windows (collective for text corpora): sequence_length tokens each, or
// with packing: truncate, each document's first min(sequence_length, context_tokens).
LoadedCorpus load_calibration(const MergeConfig& config, const CorpusSpec& spec, std::size_t vocab);

// Every check of the inputs that can fail before any work (architectures, corpora, vocab):
// throws the first problem found, naming the file or key.
MergeInputs merge_prepare(const MergeConfig& config);

// An expert's MLP of one layer as calibration runs it: rounded to dtype (what the MoE stores).
// Its mapped pages are let go once read.
MlpWeights calibration_mlp(const HfCheckpoint& expert, std::int64_t layer, DType dtype);

// Where an expert's tensors come from when the MoE is written: (layer, Hugging Face suffix
// "mlp.gate_proj.weight" or "self_attn.q_proj.weight", its name in the MoE "gate_proj" or
// "self_attn/q_proj", shape) -> the bytes to store.
using ExpertSource = std::function<std::vector<std::byte>(std::int64_t layer, const std::string& hf_suffix,
                                                          const std::string& moe_name,
                                                          const std::vector<std::int64_t>& shape)>;
// From a checkpoint (kept alive by the caller): checked, copied exactly when the dtype matches.
ExpertSource expert_from_checkpoint(const HfCheckpoint& checkpoint, DType dtype);

// Layer l's router, solved (layer_router): called once per layer as the MoE is written.
using RouterSource = std::function<RouterSolution(std::int64_t layer)>;

// The tensors of the MoE file: shared weights (dtype), every expert's MLPs (and attention, with
// expert_attention), routers (f32; a Gaussian router's quadratic factors too).
std::vector<MoeTensor> moe_tensors(const ModelConfig& config, const SharedStore& shared, DType dtype,
                                   const std::vector<ExpertSource>& experts, const RouterSource& router,
                                   bool gaussian, bool expert_attention);

// The shared weights a merge config asks for, tensor by tensor: averaged over `experts` (or
// RegMean's merge on their `calibration` windows, its forward in chunks of `chunk_batches`), a
// base checkpoint's, task arithmetic between the two, or an existing MoE's; rounded to dtype.
// Collective (RegMean's Grams are computed here).
struct SharedValues {
  SharedStore::Values values;
  std::function<bool(const std::string& hf_name)> root_only;  // tensors only rank 0 can compute (RegMean's)
};
SharedValues shared_values_for(const MergeConfig& config, const std::vector<const HfCheckpoint*>& experts, DType dtype,
                               std::span<const CorpusWindows> calibration = {}, std::int64_t chunk_batches = 1);
// The same in a store beside config.output, one tensor in memory at a time.
std::unique_ptr<SharedStore> shared_store_for(const MergeConfig& config, const std::vector<const HfCheckpoint*>& experts,
                                              DType dtype, std::span<const CorpusWindows> calibration);

// Collective, before any work of a command that writes an MoE directory: the output rule
// (check_output) on every rank, then rank 0 takes the output's lock, held while the result
// lives (null on the other ranks).
// Then the output's calibration checkpoint (resume.hpp): one left by an interrupted job is an
// error unless `resume` continues it or `force` discards it.
std::unique_ptr<OutputLock> claim_moe_output(const std::filesystem::path& output, const std::vector<InputPath>& inputs,
                                             bool force, bool resume);

// A domain whose statistics a job computes: its expert and calibration windows.
struct NewDomain {
  std::string name;
  const HfCheckpoint* checkpoint;
  const CorpusWindows* windows;
};

// What a merge-like job produces: the shared weights, the statistics it starts from (none for
// a merge, the MoE's for a fold-in), the domains still to calibrate, and every expert's source.
struct MergePlan {
  Model model;                       // config; in calibration, the resident layer's weights
  std::unique_ptr<SharedStore> shared;  // the output's shared weights
  MoeInfo info;                      // of the output: experts (all, in order), router settings, dtype, hash
  Statistics stats;                  // carried over; calibrated domains are appended
  std::unique_ptr<StatisticsFile> statistics;  // rank 0 (by stages, each solving rank): stats.h5, as domains are calibrated
  std::vector<NewDomain> calibrate;  // in order, after the carried-over ones
  std::vector<ExpertSource> sources; // every expert of the output, in order
  // The grid when the job runs by stages (parallel.stages > 1; null: every rank runs every layer).
  // Then the rank that solves a layer (Grid::solves) holds its statistics (`statistics`), solves
  // its router and writes its shard.
  std::unique_ptr<Grid> grid;
  std::string command = "dume merge"; // what the user runs again, with --resume, after a stop
};

// The checkpoint store of a plan's calibration, beside config.output (`resume`: says whether it
// continues from one, on rank 0).
std::unique_ptr<ResumeStore> open_resume_store(const MergeConfig& config, const MergePlan& plan, bool resume);

using PhaseTimes = std::vector<std::pair<std::string, double>>;

// Calibrates plan.calibrate, solves every layer's router, writes the MoE directory; on every
// rank (rank 0 solves and writes, or by stages the ranks of each stage their layers), then prints
// the phase table. With a `store`, calibration
// starts from what it holds, saves checkpoints into it (calibration.checkpoint_every, and on a
// stop signal), and it is removed once the output is written. A stop signal ends calibration on
// every rank at the same batch boundary with JobStopped.
void run_plan(MergePlan& plan, const MergeConfig& config, bool force, PhaseTimes& phases,
              ResumeStore* store = nullptr);

// The MoE files of a plan with its routers, atomically (on rank 0; by stages, on every rank).
void write_moe_directory(const std::filesystem::path& output, bool force, const MergePlan& plan,
                         const RouterSource& router, std::uint64_t shard_bytes, const std::string& yaml);

void print_phase_table(const PhaseTimes& phases);

// The whole merge; call on every rank. `resume`: continue from the checkpoint an interrupted
// merge of this config left (see resume.hpp); without it an existing checkpoint is an error,
// or discarded with `force`. `also_read`: inputs besides the config's, which the output may not
// touch either (the MoE a `fold-in --reaverage` re-merges).
void run_merge(const MergeConfig& config, bool force, bool resume = false, const std::vector<InputPath>& also_read = {});

}  // namespace dume
