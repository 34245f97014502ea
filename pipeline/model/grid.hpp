// The ranks as a grid of stages x replicas (README "Stages and replicas"). Stage s owns a
// contiguous range of layers and holds only those; the R replicas of a stage split the windows.
// World rank r is stage r / R, replica r % R (R = ranks / stages): a stage's ranks are
// neighbours, one node under Slurm's block distribution. Replica q's activations flow from
// stage to stage by point-to-point messages.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "forward.hpp"
#include "model_config.hpp"

namespace dume {

// Where the stages start: [P + 1] ascending layer indices, first 0 and last L, for P stages of a
// model of `experts` MLPs per layer, balanced by parameters. A layer weighs its attention, norms,
// MLPs and router; the embedding counts with the first stage, the final norm and LM head with the
// last. The largest stage is as small as it can be (exact). Throws (Error) for P < 1 or P > L.
std::vector<std::int64_t> stage_layers(const ModelConfig& config, std::int64_t experts, int stages);
// Parameters stage s holds under those boundaries.
std::int64_t stage_parameters(const ModelConfig& config, std::int64_t experts, std::span<const std::int64_t> first, int s);

class Grid {
 public:
  // Collective. Throws CollectiveError (one line, on every rank) when the ranks are not a
  // multiple of `stages` or there are more stages than layers.
  Grid(const ModelConfig& config, std::int64_t experts, int stages);
  ~Grid();
  Grid(const Grid&) = delete;
  Grid& operator=(const Grid&) = delete;

  int stages() const { return stages_; }
  int replicas() const { return replicas_; }
  int stage() const { return stage_; }
  int replica() const { return replica_; }
  bool first_stage() const { return stage_ == 0; }
  bool last_stage() const { return stage_ + 1 == stages_; }
  // Layer l's statistics are reduced to, solved and written by one rank of its stage: replica
  // (l - first) mod R, so that a stage's solves and writes are spread over its ranks. The
  // embedding goes with the first stage's replica 0, the final norm and LM head with the last's.
  int solver_of(std::int64_t layer) const;  // the replica, within the layer's stage
  int writer_of(std::int64_t layer) const { return rank_of(stage_of(layer), solver_of(layer)); }  // world rank
  // The world rank that writes (or reads, in export and verify) the MoE tensor at `moe_path`:
  // "/layers/N/..." is layer N's, "/embed_tokens" the first stage's, the rest the last stage's.
  int writer_of_tensor(const std::string& moe_path) const;
  bool solves(std::int64_t layer) const { return owns(layer) && solver_of(layer) == replica_; }
  bool solves_any() const { return replica_ < end_layer() - first_layer(); }  // some layer of this stage
  std::vector<int> solving_ranks() const;  // the world ranks that solve some layer, ascending
  std::int64_t first_layer(int s) const { return first_[static_cast<std::size_t>(s)]; }
  std::int64_t first_layer() const { return first_layer(stage_); }  // this stage's layers: [first, end)
  std::int64_t end_layer() const { return first_layer(stage_ + 1); }
  bool owns(std::int64_t layer) const { return layer >= first_layer() && layer < end_layer(); }
  int stage_of(std::int64_t layer) const;
  int rank_of(int stage, int replica) const { return stage * replicas_ + replica; }
  MPI_Comm stage_comm() const { return stage_comm_; }  // this stage's ranks, in replica order
  // "2 stages x 1 replica: layers 0-15 (6.83 B parameters), 16-31 (6.83 B parameters)"
  std::string describe(const ModelConfig& config, std::int64_t experts) const;

 private:
  int stages_ = 1, replicas_ = 1, stage_ = 0, replica_ = 0;
  std::vector<std::int64_t> first_;
  MPI_Comm stage_comm_ = MPI_COMM_NULL;
};

// Runs this replica's `batches` (the same list on every stage of it) through the grid in chunks
// of at most `chunk` batches. The first stage begins each chunk's streams (source.embedding);
// each stage runs its own layers over them (run_layers: `before(i, l)` before batch i of
// `batches` enters layer l) and sends them on to the next stage's same replica, which receives
// them before its layers. A send waits for its receive, so while stage s runs chunk c, stage
// s - 1 runs chunk c + 1: with M chunks and P stages, a stage idles for P - 1 chunk times of
// M + P - 1 (the pipeline's fill and drain). On the last stage, `finished(first, streams)` takes
// each chunk's streams once its layers have run (batches[first...]), where a run wants logits.
// Returns the seconds this rank waited for the stage before (to receive) and after (to take what
// it sends).
double run_pipelined(Forward& forward, const LayerSource& source, const Grid& grid, std::span<const Batch> batches,
                     std::int64_t chunk, const std::function<void(std::size_t i, std::int64_t layer)>& before = {},
                     const std::function<void(std::size_t first, std::span<Stream> streams)>& finished = {});

// Chunks of a replica's `batches` batches for P stages: enough that the pipeline idles for at
// most about a fifth of the time (4P chunks where the batches allow), at most `most` batches each.
std::int64_t pipeline_chunk(std::int64_t batches, int stages, std::int64_t most);

}  // namespace dume
