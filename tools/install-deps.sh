#!/usr/bin/env bash
# Installs the Debian 12 packages dume builds and tests with (run as root, or with sudo by hand).
# The CUDA toolkit is optional and not installed here: the CUDA backend builds where nvcc is found.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
packages=(
  build-essential cmake pkg-config git
  libopenmpi-dev openmpi-bin
  libhdf5-dev hdf5-tools
  libeigen3-dev libopenblas-dev
  libyaml-cpp-dev libgtest-dev libcli11-dev nlohmann-json3-dev
  libbenchmark-dev zlib1g-dev
  libpcre2-dev   # Unicode pre-tokenizer regexes (pipeline/text/tokenizer.cpp)
  libicu-dev   # NFC normalization for tokenizers that ship it (pipeline/text/tokenizer.cpp)
  clang-14 libclang-rt-14-dev libomp-14-dev   # libFuzzer + sanitizer runtimes, OpenMP for clang (tools/fuzz.sh)
  ccache   # CI keeps compilations between clones (.ci/run)
  slurmctld slurmd slurm-client munge   # a one-node Slurm for the slurm tests (slurm/local/up.sh)
)
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${packages[@]}"
