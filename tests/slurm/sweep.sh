#!/usr/bin/env bash
# slurm.sweep: slurm/sweep.sbatch as a 2-element job array over a list of two configs that differ
# only in lambda: both elements exit 0, each writes its own output, and the routers differ.
source "$(dirname "$0")/common.sh"
fresh_dir sweep
mkdir configs
small_config configs/lambda-1e-3.yaml "$PWD/moe-1e-3" 1.0e-3
small_config configs/lambda-1.yaml "$PWD/moe-1" 1.0
printf '# lambda sweep\nlambda-1e-3.yaml\nlambda-1.yaml\n' > configs/list.txt   # relative to the list

id=$(submit --array=0-1 --ntasks-per-node=1 "$DUME_SOURCE_DIR/slurm/sweep.sbatch" --list configs/list.txt)
result=$(wait_job "$id")
echo "$result"
[ "$(cut -d' ' -f2- <<<"$result" | tr '\n' ' ')" = "COMPLETED 0:0 COMPLETED 0:0 " ] ||
  { echo "FAILED: expected two elements COMPLETED 0:0"; tail -n 5 dume-sweep-*; exit 1; }
for i in 0 1; do
  [ -f "dume-sweep-${id}_$i.out" ] || { echo "FAILED: no log dume-sweep-${id}_$i.out"; ls; exit 1; }
done
grep -qx "# wrote $PWD/moe-1e-3" "dume-sweep-${id}_0.out" && grep -qx "# wrote $PWD/moe-1" "dume-sweep-${id}_1.out" ||
  { echo "FAILED: element i did not write config i's output"; exit 1; }
for l in 1e-3 1; do [ -f "moe-$l/moe.h5" ] || { echo "FAILED: no moe-$l/moe.h5"; exit 1; }; done
rc=0
h5diff --follow-symlinks -q moe-1e-3/moe.h5 moe-1/moe.h5 /layers/0/router/weight /layers/0/router/weight || rc=$?
[ "$rc" = 1 ] || { echo "FAILED: h5diff on the routers exited $rc, expected 1 (differences)"; exit 1; }
h5diff --follow-symlinks moe-1e-3/moe.h5 moe-1/moe.h5 /layers/0/experts/0/gate_proj /layers/0/experts/0/gate_proj ||
  { echo "FAILED: the experts should not depend on lambda"; exit 1; }
echo "two outputs, routers differ"
