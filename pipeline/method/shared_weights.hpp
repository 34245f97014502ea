// The shared (non-expert) weights as the experts hold them: averaged over checkpoints, and the
// hash that identifies them in an MoE and its resume checkpoints.
#pragma once

#include <string>
#include <vector>

#include "dtype.hpp"
#include "hf_checkpoint.hpp"
#include "model.hpp"

namespace dume {

// Shared weights: the element-wise mean of the checkpoints' (accumulated in f64; one checkpoint:
// its own), rounded to `dtype` so calibration sees exactly what is stored. Under MPI the tensors
// are shared out over the ranks and broadcast, so each rank averages 1/N of them.
SharedWeights average_shared_weights(const std::vector<const HfCheckpoint*>& checkpoints, DType dtype);

// Over the dtype's name and every shared tensor's path and values: the MoE's `shared_hash`.
std::string shared_weights_hash(const ModelConfig& config, const SharedWeights& shared, DType dtype);

}  // namespace dume
