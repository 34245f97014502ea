#include "backend.hpp"

#include "error.hpp"

namespace dume {

std::unique_ptr<Backend> make_cpu_backend(int threads);  // kernels/cpu/cpu_backend.cpp

std::unique_ptr<Backend> make_backend(BackendKind kind, int threads) {
  switch (kind) {
    case BackendKind::cpu:
      return make_cpu_backend(threads);
    case BackendKind::cuda:
      throw Error("backend 'cuda': this build of dume has no CUDA backend yet; use 'cpu'");
  }
  DUME_ASSERT(false);
}

}  // namespace dume
