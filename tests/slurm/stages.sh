#!/usr/bin/env bash
# slurm.stages: slurm/merge.sbatch on 2 tasks with --stages 2 (one stage per task) exits 0, its
# log shows the grid, and its MoE and statistics equal those of the same config merged on one
# rank (stages alone change no sum: h5diff with no tolerance, through the indexes' links).
source "$(dirname "$0")/common.sh"
fresh_dir stages
small_config slurm.yaml "$PWD/slurm-moe"
small_config one.yaml "$PWD/one-moe"

id=$(submit --nodes=1 --ntasks-per-node=2 "$DUME_SOURCE_DIR/slurm/merge.sbatch" slurm.yaml --stages 2)
result=$(wait_job "$id")
echo "job $result"
[ "$result" = "$id COMPLETED 0:0" ] || { echo "FAILED: expected job $id COMPLETED 0:0"; cat dume-merge-"$id".* 2>/dev/null; exit 1; }
grep -q '^# grid: 2 stages x 1 replica' "dume-merge-$id.out" || { echo "FAILED: no grid in the log"; cat "dume-merge-$id.out"; exit 1; }
[ -f slurm-moe/stats-00002-of-00002.h5 ] || { echo "FAILED: no statistics file of stage 2"; ls slurm-moe; exit 1; }

"$DUME_SOURCE_DIR/jobs/merge.sh" one.yaml 1 > one.log 2>&1 || { echo "FAILED: jobs/merge.sh"; cat one.log; exit 1; }
same_merge one-moe slurm-moe
echo "the Slurm job's MoE and statistics by stages equal the one-rank merge's"
