// The compute backend of one MPI rank: the node's cores shared among the ranks on it, and its GPUs
// handed out round-robin.
#pragma once

#include <memory>
#include <string>

#include "backend.hpp"

namespace dume {

// `configured` threads, or this node's cores divided by the ranks on it when 0.
int threads_per_rank(int configured);
// This rank's compute backend: `name` is cpu, cuda or auto; a CUDA rank takes the GPU of its
// local rank (ranks on one node share its GPUs round-robin).
std::unique_ptr<Backend> rank_backend(const std::string& name, int configured_threads);

}  // namespace dume
