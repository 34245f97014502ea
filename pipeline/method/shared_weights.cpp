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

}  // namespace

SharedWeights average_shared_weights(const std::vector<const HfCheckpoint*>& checkpoints, DType dtype) {
  const int rank = mpi_rank(), ranks = mpi_size();
  constexpr std::size_t kSlice = 1 << 16;
  SharedWeights w;
  std::vector<float> values(kSlice);
  std::vector<double> sum(kSlice);
  const double scale = 1.0 / static_cast<double>(checkpoints.size());
  const ModelConfig& config = checkpoints.at(0)->config();
  // Owners: largest tensors first, each to the least-loaded rank (the same on every rank).
  std::vector<std::size_t> sizes;
  w.layers.resize(static_cast<std::size_t>(config.num_layers));  // the const walk indexes layers (UBSan)
  for_each_shared_tensor(config, static_cast<const SharedWeights&>(w),
                         [&](const std::string&, const std::string&, const std::vector<std::int64_t>& shape,
                             const auto&) { sizes.push_back(numel(shape)); });
  std::vector<std::size_t> order(sizes.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return sizes[a] > sizes[b]; });
  std::vector<int> owners(sizes.size());
  std::vector<std::size_t> load(static_cast<std::size_t>(ranks), 0);
  for (const std::size_t t : order) {
    const auto least = std::min_element(load.begin(), load.end()) - load.begin();
    owners[t] = static_cast<int>(least);
    load[static_cast<std::size_t>(least)] += sizes[t];
  }
  std::size_t index = 0;
  std::string error;  // an error on one rank is rethrown on all after the broadcasts
  for_each_shared_tensor(config, w, [&](const std::string& hf_name, const std::string&,
                                        const std::vector<std::int64_t>& shape, auto& storage) {
    const int owner = owners[index++];
    const std::size_t n = numel(shape);
    if (owner == rank && error.empty()) {
      try {  // in slices, so no tensor-sized temporaries are needed
        for (std::size_t begin = 0; begin < n; begin += kSlice) {
          const std::size_t count = std::min(kSlice, n - begin);
          sum.assign(count, 0.0);
          for (const HfCheckpoint* checkpoint : checkpoints) {
            checkpoint->read_slice(hf_name, shape, begin, {values.data(), count});
            for (std::size_t i = 0; i < count; ++i) sum[i] += values[i];
          }
          float* out = storage.data() + begin;
          for (std::size_t i = 0; i < count; ++i) out[i] = static_cast<float>(sum[i] * scale);
          round_through(dtype, {out, count});
        }
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

}  // namespace dume
