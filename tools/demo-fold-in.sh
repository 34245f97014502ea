#!/usr/bin/env bash
# Fold-in demo on the bundled experts: merge three (c, python, prose), fold in the fourth
# (roff, only its corpus is processed), and check that the result equals a four-expert merge
# that uses the same shared weights (h5diff: every tensor and statistic within 1e-6 relative).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x build/pipeline/dume ] || { cmake --preset cpu && cmake --build --preset cpu; }
jobs/merge.sh configs/demo-three.yaml 2 --force
jobs/fold-in.sh configs/demo-fold-in.yaml 2 --force
# The reference: all four merged at once with shared weights taken from the three-expert MoE.
sed -e 's|^shared: average|shared: {moe: ../build/demo/moe-three}|' \
    -e 's|^output: ../build/demo/moe$|output: ../build/demo/moe-four-same-shared|' \
    -e '/^eval:/d' configs/demo.yaml > configs/.demo-four-same-shared.yaml
trap 'rm -f configs/.demo-four-same-shared.yaml' EXIT
jobs/merge.sh configs/.demo-four-same-shared.yaml 2 --force
# Every dataset (through moe.h5's links) and statistic; the root attributes differ only in
# `shared`, which records where the shared weights came from.
for f in moe.h5 stats.h5; do
  if h5diff --follow-symlinks -p 1e-6 --exclude-attribute / build/demo/moe-folded/$f build/demo/moe-four-same-shared/$f; then
    echo "fold-in demo: every dataset of $f equals the four-expert merge's (1e-6 relative)"
  else
    echo "fold-in demo: $f differs from the four-expert merge" >&2
    exit 1
  fi
done
