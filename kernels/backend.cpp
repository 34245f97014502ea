#include "backend.hpp"

#include "error.hpp"

namespace dume {

std::unique_ptr<Backend> make_cpu_backend(int threads);  // kernels/cpu/cpu_backend.cpp
#ifdef DUME_HAVE_CUDA
std::unique_ptr<Backend> make_cuda_backend(int device);  // kernels/cuda/cuda_backend.cu
int cuda_device_count();
#else
int cuda_device_count() { return 0; }
#endif

bool cuda_built() {
#ifdef DUME_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

BackendKind parse_backend(const std::string& name) {
  if (name == "cpu") return BackendKind::cpu;
  if (name == "cuda") return BackendKind::cuda;
  if (name == "auto") return cuda_device_count() > 0 ? BackendKind::cuda : BackendKind::cpu;
  throw Error("unknown backend '" + name + "' (backends: cpu, cuda, auto)");
}

std::unique_ptr<Backend> make_backend(BackendKind kind, int threads, int device) {
  switch (kind) {
    case BackendKind::cpu:
      return make_cpu_backend(threads);
    case BackendKind::cuda:
#ifdef DUME_HAVE_CUDA
      return make_cuda_backend(device);
#else
      (void)device;
      throw Error("backend 'cuda': this build of dume has no CUDA backend (nvcc was not found when it was configured)");
#endif
  }
  DUME_ASSERT(false);
}

}  // namespace dume
