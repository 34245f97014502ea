// DUME's calibration statistics (the method as the README states it): per domain e and layer l,
// A^(e)_l = sum over calibration rows of [x 1]^T [x 1] in f64, and the row count n_e.
// B_l[:, e] = X^T 1 over domain e's rows is A^(e)_l's last column, so it is derived, not stored twice.
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "backend.hpp"
#include "corpus.hpp"
#include "forward.hpp"
#include "grid.hpp"
#include "merge_config.hpp"

namespace dume {

using MatrixXdRow = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

using MatrixXfRow = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

class H5Id;
class StoredStatistics;

struct DomainStatistics {
  std::string name;
  std::int64_t tokens = 0;      // rows accumulated: sequences x context_tokens
  std::vector<MatrixXdRow> A;   // [L]: (D+1) x (D+1), symmetric once complete; empty when stored
  // Where A and the held-out inputs are when they are not in memory (the statistics file a job
  // writes, or an MoE's stats.h5): read one layer at a time (Statistics::only_layer).
  std::shared_ptr<const StoredStatistics> stored;
  // [L]: MLP inputs of held-out tokens (rows), which A does not contain; empty without a
  // held-out split (calibration.heldout_fraction), or when stored. Router settings are chosen on them.
  std::vector<MatrixXfRow> heldout;
  bool has_heldout() const;
};

struct Statistics {
  std::int64_t hidden_size = 0;     // D
  std::int64_t context_tokens = 0;  // C the statistics were made with
  std::string shared_hash;          // identity of the shared weights they were made with
  std::vector<DomainStatistics> domains;

  std::int64_t layers() const;
  MatrixXdRow total_A(std::int64_t layer) const;  // sum over domains
  Eigen::MatrixXd B(std::int64_t layer) const;    // (D+1) x E
  // These statistics with only `layer`'s A and held-out inputs present (the other layers'
  // entries empty), read back where stored: what solving one layer needs, E (D+1)^2 doubles.
  Statistics only_layer(std::int64_t layer) const;
};

// A domain's statistics in a dume statistics file (stats.h5), read one layer at a time: its A,
// L (D+1)^2 doubles (4.3 GB at 8B, 43 GB at 70B), and its held-out inputs (L x heldout_tokens x
// D floats, 1 GB at 8B).
class StoredStatistics {
 public:
  // Domain `name`'s in `statistics_file`. `checked`: each layer is checked (shape, finite values)
  // when read, for an input; a job's own sums are checked where they are used, so that a
  // non-finite one names its layer.
  StoredStatistics(std::shared_ptr<const H5Id> statistics_file, const std::string& name, std::int64_t layers,
                   std::int64_t n, bool heldout, bool checked);
  ~StoredStatistics();
  StoredStatistics(const StoredStatistics&) = delete;
  StoredStatistics& operator=(const StoredStatistics&) = delete;
  std::int64_t layers() const { return layers_; }
  std::int64_t rows() const { return n_; }  // of each layer's A: D + 1
  bool has_heldout() const { return heldout_; }
  MatrixXdRow A(std::int64_t l) const;
  MatrixXfRow heldout(std::int64_t l) const;

 private:
  std::string path(const char* what, std::int64_t l) const;  // of layer l's A or held-out inputs

  std::int64_t layers_ = 0, n_ = 0;
  bool heldout_ = false, checked_ = true;
  std::shared_ptr<const H5Id> file_;
  std::string name_;
};

// Time spent in each part of a calibration, for the merge's summary (seconds).
struct CalibrationTiming {
  double forward = 0, accumulate = 0, reduce = 0;
  double pipeline_wait = 0;  // by stages: waiting for the stage before or after (fill and drain)
  double multiply_adds = 0;  // of the A updates
};

// A domain's sums as a checkpoint writes them, one layer at a time (so that a save holds one
// layer beside the sums, not a second copy of them: 4.3 GB at 8B): the rows counted, and layer
// l's upper triangle packed (pack_layer's n(n+1)/2 values).
struct PackedSums {
  std::int64_t layers = 0, tokens = 0;
  std::function<std::vector<double>(std::int64_t l)> layer;
};
PackedSums packed_sums(const DomainStatistics& domain);  // of sums in memory, or stored

// How a calibration is chunked, interrupted and resumed (see resume.hpp). All members optional.
struct CalibrationControl {
  std::int64_t chunk_batches = 0;     // most batches per rank in one chunk (the memory plan); 0: no limit
  std::int64_t checkpoint_every = 0;  // sequences this rank runs between saves; 0: none by count
  double checkpoint_seconds = 0;      // seconds of calibration between this rank's saves; 0: none by time
  // Saves this rank's partial statistics: the global batch indices they hold, and their sums.
  std::function<void(const std::vector<std::int64_t>& batches, const PackedSums& partial)> save;
  // Collective, before each round of batches: a stop signal caught on any rank (0: none).
  std::function<int()> stop_requested;
  std::function<void()> after_batch;  // fault injection in tests
  // When set, and this rank's batches fit in one chunk, the domain runs in one pass and each
  // layer's partial sums (upper triangle) are handed over as soon as that layer is done, not
  // kept: one layer's statistics resident instead of L, and each layer's weights read once.
  // Collective: every rank calls it for every layer, in order. A stop is then agreed between
  // layers, and the domain's pass is given up (nothing saved); so no periodic saves either.
  std::function<void(std::int64_t layer, MatrixXdRow& partial)> layer_done;
  int stopped_by = 0;  // set when the calibration stopped early on this signal
};

// Runs this rank's share of one domain's calibration windows through `forward`, forced to the
// resident expert 0, truncated to C positions, stopping after the last layer's MLP input.
// Windows are grouped into fixed batches of `batch_sequences` (global batch b holds windows
// b*batch_sequences...); of the batches listed in `todo` (every batch unless resuming), the
// i-th runs on rank i mod ranks, so each sequence's activations are the same for any number of
// ranks. The batches run in one pass or in chunks, each layer by layer (`load` brings one layer
// in at a time); a layer's sums take the batches in the same order either way, so the statistics
// do not depend on it. Returns this rank's partial statistics (upper triangles only; in one pass
// only the token count, the sums having gone to control.layer_done). If control.stop_requested
// says so, stops between chunks (every rank at the same one), saves, and sets stopped_by; or,
// in one pass, between layers, saving nothing.
DomainStatistics calibrate_domain(Forward& forward, const LayerSource& load, Backend& backend, const ModelConfig& config,
                                  const CorpusWindows& windows, std::int64_t context_tokens,
                                  std::int64_t batch_sequences, const std::vector<std::int64_t>& todo, int rank,
                                  int ranks, const std::string& name, CalibrationTiming& timing, bool show_progress,
                                  CalibrationControl& control);
std::int64_t batch_count(const CorpusWindows& windows, std::int64_t batch_sequences);

// The batches a held-out split keeps out of A: batch b iff floor((b + 1) f) > floor(b f), spread
// evenly, about f of them.
std::vector<std::int64_t> heldout_batches(std::int64_t batches, double fraction);
// The batches of a domain still to run: every one that is neither held out nor saved (both sorted).
std::vector<std::int64_t> batches_to_run(std::int64_t batches, const std::vector<std::int64_t>& heldout,
                                         const std::vector<std::int64_t>& saved = {});
// The batches rank `rank` of `ranks` runs: entries rank, rank + ranks, ... of `batches`.
std::vector<std::int64_t> rank_share(std::span<const std::int64_t> batches, int rank, int ranks);

// The MLP inputs, per layer, of every stride-th token (stride = ceil(tokens / max_tokens)) of the
// held-out `batches`, in window and position order; batch i runs on rank i mod ranks, and the
// result is complete on rank 0, the same for any number of ranks.
// They run in chunks of at most `chunk_batches` batches per rank (0: one chunk). Given
// `layer_done`, and where this rank's batches fit one chunk, each layer's rows are handed to it
// as soon as they are complete (on rank 0; called on every rank) and not kept: nothing is returned.
std::vector<MatrixXfRow> collect_heldout(Forward& forward, const LayerSource& load, const ModelConfig& config,
                                         const CorpusWindows& windows, std::int64_t context_tokens,
                                         std::int64_t batch_sequences, const std::vector<std::int64_t>& batches,
                                         std::int64_t max_tokens, std::int64_t chunk_batches, Backend& backend,
                                         int rank, int ranks,
                                         const std::function<void(std::int64_t layer, const MatrixXfRow& rows)>& layer_done = {});

// Sums every rank's partial statistics of one domain into rank 0's (upper triangles are sent
// packed, half the bytes, in bands of rows), plus `base` (packed, from pack_upper) on rank 0 when
// given, and mirrors them into full symmetric matrices on rank 0. A domain calibrated in one pass
// (no A) has only its token count reduced here.
void reduce_domain(DomainStatistics& domain, CalibrationTiming& timing, std::span<const double> base = {});
// The same for one layer's sums, among the ranks of `comm` (into its rank `root`); `base` is
// that layer's part of a packed domain (layer_slice).
void reduce_layer(MatrixXdRow& A, CalibrationTiming& timing, std::span<const double> base = {},
                  MPI_Comm comm = MPI_COMM_WORLD, int root = 0);
// Layer l's upper triangle in a packed domain of `layers` layers of (n, n) matrices (empty when
// `packed` is).
std::span<const double> layer_slice(std::span<const double> packed, std::int64_t l, std::int64_t n);

// Every layer's upper triangle, row by row, then the token count: (L * n(n+1)/2 + 1) values.
std::vector<double> pack_upper(const DomainStatistics& domain);
// Layer l's upper triangle alone (read back where the domain is stored): n(n+1)/2 values.
std::vector<double> pack_layer(const DomainStatistics& domain, std::int64_t l);
// The inverse into `domain` (whose A must have its L matrices' shapes): full symmetric matrices.
void unpack_upper(std::span<const double> packed, DomainStatistics& domain);

// Mirrors the upper triangle into the lower.
void symmetrize(MatrixXdRow& A);

// One domain's statistics on a grid of stages (grid.hpp): this replica's share of `todo` (entry
// i on replica i mod R, as ranks share it unstaged) runs through the stages in chunks of at most
// `chunk` batches (run_pipelined), and each stage sums only its own layers. Once every batch has
// run, each of the stage's layers is reduced among the stage's ranks and handed to `layer_done`
// on the rank that solves it (Grid::solves), in order. A layer's sums take the batches in the same order as
// calibrate_domain's, so a grid of P stages x R replicas gives the statistics of R ranks.
// Returns the domain's rows (tokens), on every rank.
std::int64_t calibrate_staged(Forward& forward, const LayerSource& load, const Grid& grid, const CorpusWindows& windows,
                              std::int64_t context_tokens, std::int64_t batch_sequences,
                              const std::vector<std::int64_t>& todo, std::int64_t chunk, const std::string& name,
                              CalibrationTiming& timing, bool show_progress,
                              const std::function<void(std::int64_t layer, MatrixXdRow& A)>& layer_done);
// collect_heldout on a grid: the stage's layers' rows, complete, handed to `layer_done` on the
// rank that solves each layer.
void collect_heldout_staged(Forward& forward, const LayerSource& load, const Grid& grid, const CorpusWindows& windows,
                            std::int64_t context_tokens, std::int64_t batch_sequences,
                            const std::vector<std::int64_t>& batches, std::int64_t max_tokens, std::int64_t chunk,
                            const std::function<void(std::int64_t layer, const MatrixXfRow& rows)>& layer_done);

}  // namespace dume
