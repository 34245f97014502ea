#!/usr/bin/env bash
# slurm.failure: a config with an unknown key makes the job fail: Slurm reports a non-zero exit
# code (dume's), the error log has dume's one-line error, and nothing is written.
# Submitted with DUME_HOME set, the other way to find the checkout.
source "$(dirname "$0")/common.sh"
fresh_dir failure
small_config bad.yaml "$PWD/moe"
sed -i 's/^shared: average/shared: average\nno_such_key: 1/' bad.yaml

id=$(DUME_HOME=$DUME_SOURCE_DIR submit "$DUME_SOURCE_DIR/slurm/merge.sbatch" bad.yaml)
result=$(wait_job "$id")
echo "job $result"
[[ $result =~ ^$id\ FAILED\ [1-9][0-9]*:0$ ]] || { echo "FAILED: expected FAILED with a non-zero exit code"; cat dume-merge-"$id".* ; exit 1; }
errors=$(grep -c '^dume: error: ' "dume-merge-$id.err" || true)
grep -q "^dume: error: .*bad.yaml:[0-9]*: unknown key 'no_such_key'" "dume-merge-$id.err" && [ "$errors" = 1 ] ||
  { echo "FAILED: expected dume's one error line about no_such_key in dume-merge-$id.err"; cat "dume-merge-$id.err"; exit 1; }
[ ! -e moe ] || { echo "FAILED: the failed merge wrote moe/"; exit 1; }
echo "the job failed as it should"
