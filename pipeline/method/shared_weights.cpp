#include "shared_weights.hpp"

#include <algorithm>
#include <numeric>

#include "comm.hpp"
#include "hdf5_util.hpp"
#include "moe_file.hpp"

namespace dume {

namespace {

std::size_t numel(const std::vector<std::int64_t>& shape) {
  std::size_t n = 1;
  for (auto d : shape) n *= static_cast<std::size_t>(d);
  return n;
}

// The tensors' owners in for_each_shared_tensor's order: those `root_only` names to rank 0, the
// rest largest first, each to the least-loaded rank (the same on every rank).
std::vector<int> tensor_owners(const ModelConfig& config, int ranks,
                               const std::function<bool(const std::string&)>& root_only = {}) {
  std::vector<std::size_t> sizes;
  std::vector<bool> on_root;
  SharedWeights names;
  names.layers.resize(static_cast<std::size_t>(config.num_layers));  // the const walk indexes layers (UBSan)
  for_each_shared_tensor(config, static_cast<const SharedWeights&>(names),
                         [&](const std::string& hf_name, const std::string&, const std::vector<std::int64_t>& shape,
                             const auto&) {
                           sizes.push_back(numel(shape));
                           on_root.push_back(root_only && root_only(hf_name));
                         });
  std::vector<std::size_t> order(sizes.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return sizes[a] > sizes[b]; });
  std::vector<int> owners(sizes.size());
  std::vector<std::size_t> load(static_cast<std::size_t>(ranks), 0);
  for (std::size_t t = 0; t < sizes.size(); ++t)
    if (on_root[t]) load[0] += sizes[t];
  for (const std::size_t t : order) {
    if (on_root[t]) continue;  // owners[t] = 0
    const auto least = std::min_element(load.begin(), load.end()) - load.begin();
    owners[t] = static_cast<int>(least);
    load[static_cast<std::size_t>(least)] += sizes[t];
  }
  return owners;
}

// The mean of the checkpoints' tensor into `out` (numel(shape) floats), in slices, so that no
// tensor-sized temporaries are needed; the checkpoints' pages are let go once read.
void average_into(const std::vector<const HfCheckpoint*>& checkpoints, const std::string& hf_name,
                  const std::vector<std::int64_t>& shape, DType dtype, float* out) {
  constexpr std::size_t kSlice = 1 << 16;  // slice by slice: 1 GB per expert for an 8B embedding
  const std::size_t n = numel(shape);
  for (std::size_t begin = 0; begin < n; begin += kSlice)
    average_shared_slice(checkpoints, hf_name, shape, begin, dtype, {out + begin, std::min(kSlice, n - begin)});
  for (const HfCheckpoint* checkpoint : checkpoints) checkpoint->release(hf_name);  // the pages at slice edges
}

}  // namespace

void average_shared_slice(const std::vector<const HfCheckpoint*>& checkpoints, const std::string& hf_name,
                          const std::vector<std::int64_t>& shape, std::size_t begin, DType dtype, std::span<float> out) {
  std::vector<float> values(out.size());
  std::vector<double> sum(out.size(), 0.0);
  const double scale = 1.0 / static_cast<double>(checkpoints.size());
  for (const HfCheckpoint* checkpoint : checkpoints) {
    checkpoint->read_slice(hf_name, shape, begin, values);
    checkpoint->release(hf_name, begin, values.size());
    for (std::size_t i = 0; i < values.size(); ++i) sum[i] += values[i];
  }
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<float>(sum[i] * scale);
  round_through(dtype, out);
}

std::vector<float> average_shared_tensor(const std::vector<const HfCheckpoint*>& checkpoints, const std::string& hf_name,
                                         const std::vector<std::int64_t>& shape, DType dtype) {
  std::vector<float> out(numel(shape));
  average_into(checkpoints, hf_name, shape, dtype, out.data());
  return out;
}

void average_shared_tensor(const std::vector<const HfCheckpoint*>& checkpoints, const std::string& hf_name,
                           const std::vector<std::int64_t>& shape, DType dtype, std::span<float> out) {
  DUME_ASSERT(out.size() == numel(shape));
  average_into(checkpoints, hf_name, shape, dtype, out.data());
}

SharedWeights average_shared_weights(const std::vector<const HfCheckpoint*>& checkpoints, DType dtype) {
  const int rank = mpi_rank(), ranks = mpi_size();
  SharedWeights w;
  const ModelConfig& config = checkpoints.at(0)->config();
  const std::vector<int> owners = tensor_owners(config, ranks);
  std::size_t index = 0;
  std::string error;  // an error on one rank is rethrown on all after the broadcasts
  for_each_shared_tensor(config, w, [&](const std::string& hf_name, const std::string&,
                                        const std::vector<std::int64_t>& shape, auto& storage) {
    const int owner = owners[index++];
    const std::size_t n = numel(shape);
    if (owner == rank && error.empty()) {
      try {
        average_into(checkpoints, hf_name, shape, dtype, storage.data());
      } catch (const std::exception& e) {
        error = e.what();
      }
    }
    if (ranks > 1) broadcast(std::span<float>(storage.data(), n), owner);
  });
  collective_phase([&] {
    if (!error.empty()) throw Error(error);
  });
  return w;
}

std::string shared_weights_hash(const ModelConfig& config, const SharedWeights& shared, DType dtype) {
  // Over the dtype's name, then each tensor's path and f32 values, which are exactly the
  // stored dtype's values: a stored MoE read back hashes the same.
  const std::string dtype_name = h5::dtype_attribute(dtype);
  std::uint64_t hash = hash_bytes(kHashSeed, std::as_bytes(std::span(dtype_name)));
  for_each_shared_tensor(config, shared, [&](const std::string&, const std::string& path,
                                             const std::vector<std::int64_t>& shape, const auto& storage) {
    hash = hash_bytes(hash, std::as_bytes(std::span(path)));
    hash = hash_bytes(hash, std::as_bytes(std::span(storage.data(), numel(shape))));
  });
  return hash_hex(hash);
}

SharedStore::SharedStore(const std::filesystem::path& output, const ModelConfig& config, DType dtype,
                         const Values& values, const std::function<bool(const std::string&)>& root_only)
    : config_(config), dtype_(dtype) {
  auto scratch = std::make_unique<ScratchDirectory>(output);
  const int rank = mpi_rank(), ranks = mpi_size();
  const std::vector<int> owners = tensor_owners(config, ranks, root_only);
  std::vector<TensorSource> mine;
  std::size_t index = 0;
  const SharedWeights names;
  for_each_shared_tensor(config, names, [&](const std::string& hf_name, const std::string& path,
                                            const std::vector<std::int64_t>& shape, const auto&) {
    if (owners[index++] == rank)
      mine.push_back({hf_name, dtype, shape,
                      [&values, hf_name, path, shape, dtype] { return encode(dtype, values(hf_name, path, shape)); }});
  });
  const auto file = [&](int r) { return scratch->path() / ("shared-rank" + std::to_string(r) + ".safetensors"); };
  collective_phase([&] {
    if (!mine.empty()) safetensors_write(file(rank), mine);
  });
  for (int r = 0; r < ranks; ++r) {
    if (std::find(owners.begin(), owners.end(), r) == owners.end()) continue;  // owns nothing
    files_.emplace_back(file(r));
    for (const TensorInfo& t : files_.back().tensors()) owner_.emplace(t.name, files_.size() - 1);
  }
  // Once every rank has mapped the files, the directory goes: the mappings keep them readable,
  // and a job killed from here on leaves nothing on disk (the space returns with its ranks).
  // Not across nodes: a file unlinked on one NFS client is gone for the others, so there the
  // directory stays until the store is destroyed (a killed job leaves it to the output's next
  // writer, which clears it).
  barrier();
  if (mpi_local_size() == ranks) return;  // `scratch` goes now
  multi_node_scratch_ = std::move(scratch);
}

SharedStore::~SharedStore() {
  // Every rank has unmapped its files before rank 0 removes them; not while unwinding from an
  // error of this rank alone, which must not wait for the others (the job is aborted anyway).
  files_.clear();
  if (multi_node_scratch_ && std::uncaught_exceptions() == 0) barrier();
}

const TensorInfo& SharedStore::info(const std::string& hf_name, const SafetensorsFile** file) const {
  const auto it = owner_.find(hf_name);
  DUME_ASSERT(it != owner_.end());
  *file = &files_[it->second];
  return *(*file)->find(hf_name);
}

void SharedStore::read(const std::string& hf_name, std::size_t begin, std::span<float> out) const {
  const SafetensorsFile* file = nullptr;
  const TensorInfo& t = info(hf_name, &file);
  DUME_ASSERT(begin + out.size() <= t.numel());
  widen_to_f32(t.dtype, file->data(t).data() + begin * dtype_size(t.dtype), out.size(), out.data());
}

LayerWeights SharedStore::layer(std::int64_t l) const {
  LayerWeights w;
  for_each_layer_tensor(config_, l, w, [&](const std::string& hf_name, const std::string&,
                                           const std::vector<std::int64_t>& shape, auto& storage) {
    read(hf_name, 0, {storage.data(), numel(shape)});
    release(hf_name);
  });
  return w;
}

Matrix SharedStore::embedding_rows(std::span<const std::uint32_t> ids) const {
  const std::int64_t D = config_.hidden_size;
  Matrix rows(static_cast<Eigen::Index>(ids.size()), D);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    DUME_ASSERT(ids[i] < static_cast<std::uint64_t>(config_.vocab_size));
    read(std::string(hf::embed_tokens), ids[i] * static_cast<std::size_t>(D),
         {rows.data() + i * static_cast<std::size_t>(D), static_cast<std::size_t>(D)});
    if (i % 4096 == 4095) release(std::string(hf::embed_tokens));  // a whole tied LM head is read this way
  }
  // Rows scattered over the vocabulary fault in most of the matrix (the kernel maps pages around
  // each one): 1 GB at 8B if kept.
  release(std::string(hf::embed_tokens));
  return rows;
}

void SharedStore::release(const std::string& hf_name) const {
  const SafetensorsFile* file = nullptr;
  const TensorInfo& t = info(hf_name, &file);
  file->release(t);
}

std::vector<std::byte> SharedStore::bytes(const std::string& hf_name) const {
  const SafetensorsFile* file = nullptr;
  const TensorInfo& t = info(hf_name, &file);
  const auto data = file->data(t);
  std::vector<std::byte> copy(data.begin(), data.end());
  file->release(t);
  return copy;
}

std::string SharedStore::hash() const {
  std::string hex;
  if (mpi_rank() == 0) hex = local_hash();
  broadcast(hex);
  return hex;
}

std::string SharedStore::local_hash() const {
  // The same bytes as shared_weights_hash: slices of an even number of floats keep FNV's 8-byte
  // words aligned.
  constexpr std::size_t kSlice = 1 << 16;
  std::vector<float> slice(kSlice);
  const std::string dtype_name = h5::dtype_attribute(dtype_);
  std::uint64_t hash = hash_bytes(kHashSeed, std::as_bytes(std::span(dtype_name)));
  const SharedWeights names;
  for_each_shared_tensor(config_, names, [&](const std::string& hf_name, const std::string& path,
                                             const std::vector<std::int64_t>& shape, const auto&) {
    hash = hash_bytes(hash, std::as_bytes(std::span(path)));
    const std::size_t n = numel(shape);
    for (std::size_t begin = 0; begin < n; begin += kSlice) {
      const std::size_t count = std::min(kSlice, n - begin);
      read(hf_name, begin, {slice.data(), count});
      hash = hash_bytes(hash, std::as_bytes(std::span(slice.data(), count)));
    }
    release(hf_name);
  });
  return hash_hex(hash);
}

}  // namespace dume
