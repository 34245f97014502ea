#!/usr/bin/env bash
# A scaling study: `dume bench` on each rank count, one JSON per count, and a PNG plot of the
# phase rates against ranks (tools/plot_bench.py, if matplotlib is installed).
# usage: jobs/bench.sh [OUT_DIR] [RANKS...] [-- dume bench options]
#   defaults: OUT_DIR build/bench, RANKS 1 2; e.g. jobs/bench.sh out 1 2 4 8 -- --preset llama-1b-shape
set -euo pipefail
source "$(dirname "$0")/launch.sh"
out=${1:-build/bench}
[ $# -gt 0 ] && shift
counts=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do counts+=("$1"); shift; done
[ $# -gt 0 ] && shift  # the --
[ ${#counts[@]} -gt 0 ] || counts=(1 2)
mkdir -p "$out"
for n in "${counts[@]}"; do
  echo "# jobs/bench.sh: $n rank(s)"
  launch "$n" bench --json "$out/bench-np$n.json" "$@"
done
if python3 -c "import matplotlib" 2>/dev/null; then
  python3 "$here/../tools/plot_bench.py" "$out"/bench-np*.json --output "$out/bench.png"
else
  echo "# jobs/bench.sh: matplotlib not installed; plot later with tools/plot_bench.py $out/bench-np*.json"
fi
