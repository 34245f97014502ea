// `dume merge` as an MPI job: checks, shared weights, per-domain statistics with each
// expert forced, reduction, ridge solve on rank 0, and the HDF5 MoE written atomically.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "checkpoint.hpp"
#include "merge_config.hpp"
#include "moe_file.hpp"
#include "ridge.hpp"

namespace dume {

// The opened and checked inputs of a merge.
struct MergeInputs {
  std::vector<Checkpoint> experts;
  std::vector<CorpusWindows> calibration;  // one per expert, its domain's windows
  DType dtype = DType::BF16;               // of the stored MoE
};

// Every check that can fail before any work (architectures, corpora, vocab, output): throws
// the first problem found, naming the file or key.
MergeInputs merge_prepare(const MergeConfig& config, bool force);

// Shared weights: the element-wise mean of the experts' (accumulated in f64), or a base
// checkpoint's, rounded to `dtype` so calibration sees exactly what is stored.
SharedWeights average_shared_weights(const std::vector<const Checkpoint*>& checkpoints, DType dtype);

// Expert `e`'s MLP of each layer but the last (which statistics never need), rounded to dtype.
std::vector<std::vector<MlpWeights>> calibration_mlps(const Checkpoint& expert, DType dtype);

// The tensors of the MoE file: shared weights (dtype), every expert's MLPs (copied exactly
// when the dtype matches), routers (f32).
std::vector<MoeTensor> moe_tensors(const ModelConfig& config, const SharedWeights& shared, DType dtype,
                                   const std::vector<const Checkpoint*>& experts,
                                   const std::vector<RouterSolution>& routers);
std::string shared_weights_hash(const ModelConfig& config, const SharedWeights& shared, DType dtype);

// Writes the MoE, stats.h5 and the resolved config into a temporary sibling of `output`, then
// renames it into place (replacing an existing output only with force).
void write_output_atomically(const std::filesystem::path& output, bool force,
                             const std::function<void(const std::filesystem::path& dir)>& fill);

// The whole merge; call on every rank.
void run_merge(const MergeConfig& config, bool force);

}  // namespace dume
