// The shared (non-expert) weights as the experts hold them: averaged over checkpoints, the
// hash that identifies them in an MoE and its resume checkpoints, and the store a job keeps
// them in.
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "dtype.hpp"
#include "hf_checkpoint.hpp"
#include "model.hpp"
#include "outputs.hpp"
#include "safetensors.hpp"

namespace dume {

// Shared weights: the element-wise mean of the checkpoints' (accumulated in f64; one checkpoint:
// its own), rounded to `dtype` so calibration sees exactly what is stored. Under MPI the tensors
// are shared out over the ranks and broadcast, so each rank averages 1/N of them.
SharedWeights average_shared_weights(const std::vector<const HfCheckpoint*>& checkpoints, DType dtype);

// One shared tensor averaged over the checkpoints in the same way (f64, rounded to `dtype`).
std::vector<float> average_shared_tensor(const std::vector<const HfCheckpoint*>& checkpoints, const std::string& hf_name,
                                         const std::vector<std::int64_t>& shape, DType dtype);
// The same into `out` (numel(shape) floats), with no tensor-sized temporary.
void average_shared_tensor(const std::vector<const HfCheckpoint*>& checkpoints, const std::string& hf_name,
                           const std::vector<std::int64_t>& shape, DType dtype, std::span<float> out);

// Elements [begin, begin + out.size()) of the flattened tensor averaged in the same way.
void average_shared_slice(const std::vector<const HfCheckpoint*>& checkpoints, const std::string& hf_name,
                          const std::vector<std::int64_t>& shape, std::size_t begin, DType dtype, std::span<float> out);

// Over the dtype's name and every shared tensor's path and values: the MoE's `shared_hash`.
std::string shared_weights_hash(const ModelConfig& config, const SharedWeights& shared, DType dtype);

// A job's shared weights as the MoE stores them (its dtype), written once into scratch
// safetensors files beside the output, memory-mapped and unlinked, so that no rank holds them
// whole (9.6 GB in f32 at 8B, 56 GB at 70B): calibration widens one layer at a time and gathers
// the embedding rows its tokens use, and the MoE writer copies their bytes. Pages are let go
// once read.
class SharedStore {
 public:
  // The tensor named `hf_name` (`moe_path` in an MoE) of the given shape in f32, exactly
  // representable in the store's dtype.
  using Values = std::function<std::vector<float>(const std::string& hf_name, const std::string& moe_path,
                                                  const std::vector<std::int64_t>& shape)>;
  // Collective: each rank computes and writes its share of the tensors (those `root_only` names
  // on rank 0, the rest largest first, each to the least-loaded rank), then every rank maps all
  // of them. An error on any rank is raised on all.
  SharedStore(const std::filesystem::path& output, const ModelConfig& config, DType dtype, const Values& values,
              const std::function<bool(const std::string& hf_name)>& root_only = {});
  ~SharedStore();  // collective when the job spans nodes
  SharedStore(const SharedStore&) = delete;
  SharedStore& operator=(const SharedStore&) = delete;

  const ModelConfig& config() const { return config_; }
  DType dtype() const { return dtype_; }
  LayerWeights layer(std::int64_t l) const;  // in f32
  // The embedding rows of `ids` (each < vocab_size), row i for ids[i]: [ids.size(), D] in f32.
  Matrix embedding_rows(std::span<const std::uint32_t> ids) const;
  std::vector<std::byte> bytes(const std::string& hf_name) const;  // as stored
  // shared_weights_hash of these weights, read tensor by tensor on rank 0. Collective.
  std::string hash() const;

 private:
  void read(const std::string& hf_name, std::size_t begin, std::span<float> out) const;
  void release(const std::string& hf_name) const;  // lets its mapped pages go
  std::string local_hash() const;
  const TensorInfo& info(const std::string& hf_name, const SafetensorsFile** file) const;

  ModelConfig config_;
  DType dtype_;
  std::vector<SafetensorsFile> files_;
  std::unordered_map<std::string, std::size_t> owner_;  // tensor name -> index into files_
  std::unique_ptr<ScratchDirectory> multi_node_scratch_;  // kept while mapped on other nodes
};

}  // namespace dume
