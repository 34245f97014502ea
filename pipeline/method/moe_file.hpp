// The DUME MoE on disk (the README's "The output"): a directory with moe.h5 (the index: attributes
// and HDF5 external links to every dataset) and shards moe-0000i-of-0000N.h5, plus the
// statistics file stats.h5. Writers fill a directory that the caller renames into place.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "dtype.hpp"
#include "grid.hpp"
#include "merge_config.hpp"
#include "layer_stream.hpp"
#include "model.hpp"
#include "outputs.hpp"
#include "statistics.hpp"

namespace dume {

// One dataset of the MoE (name: its HDF5 path), its bytes produced when its shard is written.
using MoeTensor = TensorSource;

// What moe.h5 says about the MoE besides its tensors.
struct MoeInfo {
  ModelConfig config;                 // from the stored config.json text
  std::vector<std::string> experts;   // names, expert index order
  RouterSettings router;              // lambda, temperature, top_k, context_tokens, bias
  DType dtype = DType::BF16;          // dtype of the stored weights
  std::string shared;                 // "average" or the shared checkpoint's path
  std::string shared_hash;
  std::vector<std::string> shard_files;
};

// Dataset paths of the layout.
namespace moe_path {
std::string layer(std::int64_t l, const std::string& rest);                   // /layers/{l}/{rest}
std::string expert(std::int64_t l, std::int64_t e, const std::string& proj);  // /layers/{l}/experts/{e}/{proj}
}  // namespace moe_path

// 64-bit FNV-1a (word-wise) for the shared-weight identity that moe.h5 and stats.h5 record and
// fold-in checks (see shared_weights_hash).
std::uint64_t hash_bytes(std::uint64_t hash, std::span<const std::byte> bytes);
inline constexpr std::uint64_t kHashSeed = 1469598103934665603ull;
std::string hash_hex(std::uint64_t hash);

// Which shard each tensor goes to: tensors fill shards in order, and a shard closes before the
// tensor that would overflow `shard_bytes` (a tensor larger than that gets a shard of its own),
// or whose writer (`writer_of`, ascending; empty: one writer) differs, so that each rank of a
// grid writes shards of its own.
std::vector<std::size_t> plan_shards(const std::vector<MoeTensor>& tensors, std::uint64_t shard_bytes,
                                     std::span<const int> writer_of = {});
// The rank of a grid that writes each tensor of an MoE: a layer's tensors the rank that solves
// the layer (Grid::writer_of), the embedding the first stage's first rank, the final norm and
// LM head the last stage's.
std::vector<int> tensor_writers(const std::vector<MoeTensor>& tensors, const Grid& grid);

// Writes the shards and moe.h5 into `dir` (which must exist and be empty).
void write_moe(const std::filesystem::path& dir, const std::vector<MoeTensor>& tensors, const MoeInfo& info,
               std::uint64_t shard_bytes);
// The same by stages: every rank calls it, each rank writes the shards of the layers it solves,
// and rank 0 the index once they are all written.
void write_moe(const std::filesystem::path& dir, const std::vector<MoeTensor>& tensors, const MoeInfo& info,
               std::uint64_t shard_bytes, const Grid& grid);

MoeInfo read_moe_info(const std::filesystem::path& dir);
// Every dataset path an MoE with this index holds (shared weights, each expert's tensors,
// routers, the per-layer lambdas of lambda: auto), no more and no less.
std::set<std::string> moe_dataset_paths(const MoeInfo& info);
// Refuses (Error naming `dir`/moe.h5 and the path) a dataset that the MoE's layers and experts
// do not account for: a copy, removal or export would drop it without a word.
void check_moe_datasets(const std::filesystem::path& dir, const MoeInfo& info);
// Reads the whole MoE (shared weights, every expert's MLPs, routers) widened to f32.
Model read_moe_model(const std::filesystem::path& dir);
// The same one part at a time (layer_stream.hpp), into empty_moe_model's shape: the MoE's
// experts and router settings, no weights.
LayerFill moe_layers(const std::filesystem::path& dir, const MoeInfo& info);
Model empty_moe_model(const MoeInfo& info);
// Only its shared weights, widened to f32.
SharedWeights read_moe_shared(const std::filesystem::path& dir);

// The stats.h5 of a job's output, written as the job goes (rank 0): a calibrated domain's A and
// held-out inputs go in once (add: their memory is freed, and they are read back from here one
// layer at a time to solve), and finish completes the file and moves it into the output. So a
// domain's A (4.3 GB at 8B, 43 GB at 70B) is written to disk once, never copied. Until then a
// ScratchFile: nothing is left if the job fails.
class StatisticsFile {
 public:
  StatisticsFile(const std::filesystem::path& output, std::int64_t layers, std::int64_t hidden_size);
  // Layer l's reduced A or held-out inputs of domain `name`, as soon as they are complete (a
  // one-pass calibration).
  void write_layer(const std::string& name, std::int64_t l, const MatrixXdRow& A);
  void write_heldout(const std::string& name, std::int64_t l, const MatrixXfRow& X);
  // The domain's A (unless its layers were written already) and held-out inputs.
  void add(DomainStatistics& domain);
  // Writes what `stats` holds beyond the added domains (carried domains, B, attributes) and
  // names the file `target`, in the output's directory.
  void finish(const Statistics& stats, const std::filesystem::path& target);
  // The same by stages (collective over the grid): each rank that solves layers writes their B and
  // the rest into its file `stats-0000k-of-0000N.h5` beside `target`, and rank 0 the index `target`,
  // whose datasets link to them (`stage_file`: this rank's, null where it solves none).
  static void finish(StatisticsFile* stage_file, const Statistics& stats, const std::filesystem::path& target,
                     const Grid& grid);

 private:
  // The attributes, and for each of `layers` its B and what stats hold beyond the added domains.
  void write_rest(const Statistics& stats, std::span<const std::int64_t> layers);

  ScratchFile scratch_;
  std::int64_t layers_, n_;
  std::shared_ptr<const H5Id> file_;
  std::set<std::string> added_, heldout_written_;
};
Statistics read_statistics(const std::filesystem::path& file);
// The same with each domain's A left in the file (StoredStatistics: 4.3 GB per domain at 8B), read one
// layer at a time where used; every layer is checked now, so a bad file fails before any work.
Statistics open_statistics(const std::filesystem::path& file);

}  // namespace dume
