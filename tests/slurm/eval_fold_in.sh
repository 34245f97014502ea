#!/usr/bin/env bash
# slurm.eval_fold_in: slurm/eval.sbatch and slurm/fold-in.sbatch on a three-expert MoE (merged
# here with mpirun), as two jobs running at once: both exit 0 and write what they should.
source "$(dirname "$0")/common.sh"
fresh_dir eval_fold_in
small_config three.yaml "$PWD/moe-three"
sed -i '/- name: roff/,+3d' three.yaml
echo "eval: {methods: [dume], top_k: [1], output: $PWD/eval, max_sequences: 8}" >> three.yaml
cat > fold-in.yaml <<YAML
moe: $PWD/moe-three
experts:
  - name: roff
    checkpoint: $DUME_SOURCE_DIR/experts/roff
    calibration: {path: $DUME_SOURCE_DIR/experts/data/roff.calib.bin, format: text-bytes}
calibration: {sequence_length: 256, max_sequences: 16, batch_sequences: 8}
output: $PWD/moe-folded
YAML
"$DUME_SOURCE_DIR/jobs/merge.sh" three.yaml 2 > merge.log 2>&1 || { echo "FAILED: jobs/merge.sh"; cat merge.log; exit 1; }

eval_id=$(submit --ntasks-per-node=1 "$DUME_SOURCE_DIR/slurm/eval.sbatch" three.yaml)
fold_id=$(submit --ntasks-per-node=1 "$DUME_SOURCE_DIR/slurm/fold-in.sbatch" fold-in.yaml)
for job in "eval $eval_id" "fold-in $fold_id"; do
  set -- $job
  result=$(wait_job "$2")
  echo "$1: job $result"
  [ "$result" = "$2 COMPLETED 0:0" ] || { echo "FAILED: expected COMPLETED 0:0"; cat "dume-$1-$2".*; exit 1; }
done
[ -s eval/eval.json ] || { echo "FAILED: no eval/eval.json"; exit 1; }
grep -qx "# wrote $PWD/moe-folded" "dume-fold-in-$fold_id.out" && [ -f moe-folded/moe.h5 ] ||
  { echo "FAILED: the fold-in wrote no moe-folded"; cat "dume-fold-in-$fold_id.out"; exit 1; }
echo "eval and fold-in jobs done"
