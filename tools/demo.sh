#!/usr/bin/env bash
# The README's demo: build dume if needed, merge the four bundled tiny experts with DUME on
# 2 MPI ranks, then evaluate the MoE against the baselines and print the table.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x build/pipeline/dume ] || { cmake --preset cpu && cmake --build --preset cpu; }
jobs/merge.sh configs/demo.yaml 2 --force
jobs/eval.sh configs/demo.yaml 2
echo "demo: the MoE is in build/demo/moe (try: build/pipeline/dume inspect build/demo/moe);"
echo "      the evaluation in build/demo/eval (eval.json, routing.png)"
