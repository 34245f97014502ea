#!/bin/bash
# Not in CI (minutes, and 72 GB of disk at 8B: 30 GB of experts, 41 GB of MoE and statistics): merges two synthetic experts of a preset shape
# on grids of stages x replicas (1x1, 1x2 and 2x1: one rank, two replicas, two stages) and prints,
# per run, `dume plan`'s predicted peak memory per rank beside the measured one (each rank's
# getrusage peak, from the merge's own report) and the wall time.
#   tools/scale.sh [PRESET] [DIR] [LAYERS]
#     PRESET: llama-1b-shape (default) | llama-8b-shape | llama-70b-shape | d1024
#     LAYERS: the preset's layers instead (llama-70b-shape 4: 11 GB per expert, 22 GB of MoE)
# The measured peak must be within 20 % of the prediction; the script fails otherwise. CI runs it
# at d1024 (ranks.memory_plan); DUME names the binary (default: build/pipeline/dume), GRIDS the
# grids (default "1x1 1x2 2x1").
set -euo pipefail
preset=${1:-llama-1b-shape}
layers=${3:-}
dir=${2:-/tmp/dume-scale-$preset${layers:+-$layers}}
dume=${DUME:-$(cd "$(dirname "$0")/.." && pwd)/build/pipeline/dume}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
[ -d "$dir" ] || "$dume" bench --write-experts "$dir" --preset "$preset" ${layers:+--layers "$layers"} --experts 2 --tokens 1024
cd "$dir"
echo "| preset | grid (stages x replicas) | predicted peak per rank | measured peak per rank | wall |"
echo "|---|---|---|---|---|"
status=0
for grid in ${GRIDS:-1x1 1x2 2x1}; do
  stages=${grid%x*}
  ranks=$((stages * ${grid#*x}))
  predicted=$("$dume" plan merge.yaml --ranks "$ranks" --stages "$stages" |
              sed -n 's/^# memory per rank: .*predicted peak \([0-9.]* [kMGT]*B\).*/\1/p')
  start=$SECONDS
  rm -rf moe  # not --force: the old MoE would stay on disk until the new one is written
  mpirun --oversubscribe -n "$ranks" "$dume" merge merge.yaml --stages "$stages" > "merge-$grid.log" 2>&1
  wall=$((SECONDS - start))
  measured=$(sed -n 's/^# peak RSS per rank \([^;]*\);.*/\1/p' "merge-$grid.log")
  printf "| %s%s | %s | %s | %s | %d s |\n" "$preset" "${layers:+ --layers $layers}" "$grid" "$predicted" "$measured" "$wall"
  python3 - "$predicted" "$measured" <<'PY' || status=1
import re, sys
unit = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}
def size(text):
    value, u = text.split()
    return float(value) * unit[u]
predicted = size(sys.argv[1])
peaks = [size(p.strip()) for p in sys.argv[2].split(",")]
worst = max(abs(p - predicted) / predicted for p in peaks)
if worst > 0.2:
    print(f"measured peak off the prediction by {worst:.0%} (> 20 %)")
    sys.exit(1)
PY
done
rm -rf moe
exit $status
