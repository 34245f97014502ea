// What a merge holds in memory on each rank, phase by phase, and how many calibration windows a
// chunk may carry within a budget (compute.memory / --memory). Calibration runs layer by layer
// (statistics.hpp): in one pass over a domain's batches where they fit, so what grows with the
// model is one layer's weights and statistics; or in chunks of batches, holding one domain's
// statistics. What grows with the corpus is only the batches held.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "merge_config.hpp"
#include "model_config.hpp"

namespace dume {

struct MemoryPlan {
  std::int64_t budget = 0;  // bytes per rank
  // Bytes per rank by phase, each a list of (what, bytes); the peak is the largest phase's sum.
  std::vector<std::pair<std::string, std::vector<std::pair<std::string, std::int64_t>>>> phases;
  std::int64_t round_bytes = 0;   // residual streams of one batch of windows
  std::int64_t chunk_rounds = 0;  // batches per rank a chunk may carry (run layer by layer at once)
  std::int64_t minimum = 0;       // the smallest budget that works
  // Calibration runs each domain in one pass, holding one layer's statistics (all of a rank's
  // batches fit at once), rather than in chunks holding all of its layers'.
  bool one_pass = false;

  std::int64_t peak() const;
  std::string describe() const;  // one line per phase, for the job's log (rank 0)
};

// A stage's share of a merge by stages (grid.hpp): the grid's stages and the stage's layers.
// Calibration then runs in chunks through the pipeline, each stage holding its own layers' sums.
struct StageShare {
  int stages = 1;
  std::int64_t layers = 0;
};

// The plan of a merge of `experts` experts of shape `model` stored in `dtype`, whose ranks run at
// most `batches_per_rank` batches of one domain, for a budget (bytes per rank; 0: the default
// for this job's ranks on this node); by stages, of a rank of a stage of `stage.layers` layers.
// Throws Error naming the smallest budget that works when even one batch per chunk does not fit.
MemoryPlan plan_memory(const ModelConfig& model, const MergeConfig& config, std::int64_t experts, DType dtype,
                       std::int64_t batches_per_rank, std::int64_t budget, const StageShare& stage = {});

// The plan of a layer-streamed evaluation (dume eval, ppl) of a model of `experts` MLPs per
// layer (1: dense) whose ranks run at most `batches_per_rank` batches of `batch_sequences`
// windows of S tokens: one layer's weights or the head in f32, the forward's buffers and a
// batch's logits, and a chunk of residual streams. Throws like plan_memory.
MemoryPlan plan_eval_memory(const ModelConfig& model, std::int64_t experts, bool expert_attention, bool gaussian,
                            std::int64_t batch_sequences, std::int64_t sequence_length, std::int64_t batches_per_rank,
                            std::int64_t budget);

// This node's memory (MemTotal) divided by the ranks on it, less an eighth for the system and
// the page cache: the default budget of compute.memory.
std::int64_t memory_budget_default(int ranks_on_node);

}  // namespace dume
