#include "rank_backend.hpp"

#include <algorithm>
#include <thread>

#include "comm.hpp"

namespace dume {

int threads_per_rank(int configured) {
  return configured > 0 ? configured
                        : std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / mpi_local_size());
}

std::unique_ptr<Backend> rank_backend(const std::string& name, int configured_threads) {
  return make_backend(parse_backend(name), threads_per_rank(configured_threads), mpi_local_rank());
}

}  // namespace dume
