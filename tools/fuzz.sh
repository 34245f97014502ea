#!/usr/bin/env bash
# Builds the libFuzzer harnesses (fuzz/) with clang, ASan and UBSan into build-fuzz and runs each
# for SECONDS (default 60) from its committed seed corpus (fuzz/corpus/<target>/). New inputs that
# reach new code go to build-fuzz/corpus/<target>/ (not the repository); a crash leaves its input
# as build-fuzz/crash-* and makes this script fail.
#   tools/fuzz.sh [SECONDS] [TARGET...]      targets: safetensors model_config merge_config moe_h5
#                                            tokenizer megatron documents
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(safetensors model_config merge_config moe_h5 tokenizer megatron documents)
cxx=${CXX_FUZZ:-$(command -v clang++-14 || command -v clang++)}
cc=${CC_FUZZ:-$(command -v clang-14 || command -v clang)}

mkdir -p build-fuzz
cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_C_COMPILER="$cc" \
  -DDUME_FUZZ=ON -DDUME_CUDA=OFF -DDUME_NATIVE=OFF -DBUILD_TESTING=OFF > build-fuzz/configure.log 2>&1 || { cat build-fuzz/configure.log; exit 1; }
cmake --build build-fuzz -j "$(nproc)" --target "${targets[@]/#/fuzz_}" > build-fuzz/build.log 2>&1 || { tail -50 build-fuzz/build.log; exit 1; }

# HDF5's error paths leak (in libhdf5, which is not ours and not instrumented): no leak checks
# for the HDF5 harness. Every harness: one process, inputs up to 64 KiB (HDF5: 128 KiB), 2 GB RSS.
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export OMP_NUM_THREADS=1
# The harnesses' scratch files (moe_h5 writes its inputs as files) go to a temporary directory
# of this run, removed at the end: a harness restarted after a crash cannot clean up its own.
TMPDIR=$(mktemp -d)
export TMPDIR
trap 'rm -rf "$TMPDIR"' EXIT
status=0
for t in "${targets[@]}"; do
  mkdir -p "build-fuzz/corpus/$t"
  leaks=1 max_len=65536
  [ "$t" = moe_h5 ] && leaks=0 max_len=131072  # the seed shard is 113 KB
  # A crafted tokenizer regex could backtrack for long (the tokenizer bounds it with PCRE2's
  # match limits): a slow input is a finding after 60 s (ASan on a busy 2-core machine is slow),
  # not after libFuzzer's 1200.
  timeout=1200
  case $t in tokenizer | megatron | documents) timeout=60 ;; esac
  # libhdf5 1.10 is not robust against crafted files (memory errors inside libhdf5 within
  # seconds): the HDF5 harness runs in fork mode past crashes (its exit code is then the last
  # child's, and the children's stacks are not kept), and each crash input is rerun alone and
  # blamed on whichever of libhdf5 and dume's sources comes first in its stack.
  fork=() asan=$ASAN_OPTIONS
  [ "$t" = moe_h5 ] && fork=(-fork=1 -ignore_crashes=1) asan=${ASAN_OPTIONS/detect_leaks=1/detect_leaks=0}
  mkdir -p "build-fuzz/artifacts/$t"
  rm -f "build-fuzz/artifacts/$t"/crash-* "build-fuzz/artifacts/$t"/leak-* "build-fuzz/artifacts/$t"/timeout-*
  echo "== fuzz_$t: ${seconds}s"
  log=build-fuzz/fuzz-$t.log
  rc=0
  (cd build-fuzz && ASAN_OPTIONS=$asan "./fuzz/fuzz_$t" -max_total_time="$seconds" -max_len=$max_len -rss_limit_mb=2048 \
     -detect_leaks=$leaks -timeout=$timeout -print_final_stats=1 -artifact_prefix="artifacts/$t/" "${fork[@]}" \
     "corpus/$t" "../fuzz/corpus/$t" 2> "fuzz-$t.log") || rc=$?
  if { [ ${#fork[@]} -eq 0 ] && [ "$rc" -ne 0 ]; } || ! grep -q "^INFO: exiting: \|^Done " "$log"; then
    status=1
    echo "   fuzz_$t failed (exit $rc):"
    grep -E "ERROR|SUMMARY|Test unit written|==[0-9]+==" "$log" | head -40
  fi
  for crash in build-fuzz/artifacts/"$t"/crash-*; do
    [ -e "$crash" ] || continue
    # The first frame with libhdf5 or a dume source file; frames in the harness binary without
    # a source file are ASan's interceptors (malloc, memcpy) and say nothing about the caller.
    blame=$(ASAN_OPTIONS=$asan build-fuzz/fuzz/"fuzz_$t" -detect_leaks=$leaks "$crash" 2>&1 |
            grep -oE "libhdf5|/(pipeline|fuzz|kernels)/[a-z0-9_/]+\.(cpp|hpp)" | head -1 || true)
    case $blame in
      libhdf5) echo "   memory error inside libhdf5 (not dume's): $crash" ;;
      "") echo "   crash did not reproduce alone (state left in libhdf5 by earlier inputs): $crash" ;;
      *) echo "   FINDING in dume ($blame): $crash"; status=1 ;;
    esac
  done
  # Final stats; fork mode prints none, only progress lines ("#runs: cov: ... exec/s ...").
  { grep -E "^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)" "$log" ||
    grep -E "^#[0-9]+: cov:" "$log" | tail -1 || true; } | tr "\n" " "
  echo
done
exit $status
