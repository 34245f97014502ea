#!/usr/bin/env bash
# slurm.merge: slurm/merge.sbatch on 2 tasks exits 0, its log names the output, and its MoE and
# statistics equal those of the same config merged with `jobs/merge.sh CONFIG 2` (mpirun).
# Submitted from a scratch directory without DUME_HOME: the template finds the checkout itself.
source "$(dirname "$0")/common.sh"
fresh_dir merge
small_config slurm.yaml "$PWD/slurm-moe"
small_config mpirun.yaml "$PWD/mpirun-moe"

id=$(submit --nodes=1 --ntasks-per-node=2 "$DUME_SOURCE_DIR/slurm/merge.sbatch" slurm.yaml)
result=$(wait_job "$id")
echo "job $result"
[ "$result" = "$id COMPLETED 0:0" ] || { echo "FAILED: expected job $id COMPLETED 0:0"; cat dume-merge-"$id".* 2>/dev/null; exit 1; }
[ -f "dume-merge-$id.out" ] && [ -f "dume-merge-$id.err" ] || { echo "FAILED: no logs dume-merge-$id.out/.err"; ls; exit 1; }
grep -qx "# wrote $PWD/slurm-moe" "dume-merge-$id.out" || { echo "FAILED: the log does not name the output"; cat "dume-merge-$id.out"; exit 1; }
grep -q '2 ranks' "dume-merge-$id.out" || { echo "FAILED: not 2 ranks"; cat "dume-merge-$id.out"; exit 1; }

"$DUME_SOURCE_DIR/jobs/merge.sh" mpirun.yaml 2 > mpirun.log 2>&1 || { echo "FAILED: jobs/merge.sh"; cat mpirun.log; exit 1; }
same_merge mpirun-moe slurm-moe
echo "the Slurm job's MoE and statistics equal the mpirun merge's"
