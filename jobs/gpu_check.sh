#!/usr/bin/env bash
# The GPU check of the CUDA backend, one script for a machine with a GPU (under 5 minutes on
# one): builds dume with CUDA, runs the GPU tests (every kernel and the forward pass against
# the CPU backend; a skipped test fails the check here), benchmarks the CUDA backend on a
# Llama-3.2-1B-shaped model, and prints a short table last. Paste the log into the README's
# GPU section each time it runs on a new GPU.
# usage: jobs/gpu_check.sh [BUILD_DIR] (default build-gpu); the log goes to BUILD_DIR/gpu_check.log
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build-gpu}
mkdir -p "$build"
log=$build/gpu_check.log
exec > >(tee "$log") 2>&1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || {
  echo "gpu_check: no GPU visible (nvidia-smi failed)"
  exit 2
}
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DDUME_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="80;90" >/dev/null
cmake --build "$build" -j "$(nproc)" --target dume dume_tests

echo "# GPU tests (the CUDA backend against the CPU reference)"
"$build/tests/dume_tests" --gtest_filter='CudaBackend.*' --gtest_brief=1 | tee "$build/gpu_tests.txt"
if grep -q "SKIPPED\|FAILED" "$build/gpu_tests.txt"; then
  echo "gpu_check: GPU tests failed or were skipped"
  exit 1
fi

echo "# GPU benchmark (llama-1b-shape, 4 layers, random weights)"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun -np 1 "$build/pipeline/dume" bench --backend cuda --preset llama-1b-shape --layers 4 --batch 8 \
  --sequence-length 1024 --repeat 5 --json "$build/gpu_bench.json"

echo "# summary"
python3 - "$build/gpu_bench.json" <<'EOF'
import json, sys
bench = json.load(open(sys.argv[1]))
print(f"backend: {bench['backend']}")
for p in bench["phases"]:
    if p["limit"] > 0 or p["unit"] == "tokens/s":
        ratio = f"{p['ratio']:.2f}" if p["limit"] > 0 else "-"
        print(f"  {p['phase']:<28} {p['measured']:>10.1f} {p['unit']:<8} ratio {ratio:>5}  {p['limit_is']}")
print("limits: the backend's own f32 GEMM (cuBLAS, no TF32); issue 6's bars: forward+statistics >= 0.50 of the")
print("bf16 GEMM rate (the backend has no bf16 GEMMs yet), statistics (SYRK) >= 0.60 of the f32 GEMM rate")
EOF
