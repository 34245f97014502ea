# Sourced by the slurm tests (tests/slurm/*.sh, run by ctest with label slurm): skips the test
# (exit 77, which ctest reports as Skipped; `ctest -L slurm -V` shows why) where Slurm cannot run
# here, points the Slurm commands at the local Slurm of slurm/local/up.sh, and has helpers.
# Environment from ctest: DUME_SOURCE_DIR, DUME (the binary), DUME_SLURM_WORK (scratch space).
# DUME_SLURM_SKIP=1 skips them all, e.g. on a machine that runs a real Slurm of its own.
set -euo pipefail

skip() { echo "SKIPPED: $*"; exit 77; }
[ -z "${DUME_SLURM_SKIP:-}" ] || skip "DUME_SLURM_SKIP is set"
[ "$(id -u)" = 0 ] || skip "not root: slurm/local/up.sh starts munged, slurmctld and slurmd as root"
missing=()
for c in munged slurmctld slurmd sbatch scontrol h5diff; do command -v "$c" >/dev/null || missing+=("$c"); done
[ ${#missing[@]} -eq 0 ] ||
  skip "${missing[*]} not installed (tools/install-deps.sh installs slurmctld slurmd slurm-client munge hdf5-tools)"

# Nothing from a surrounding allocation may leak into the jobs or make the drivers use srun.
for v in $(compgen -e | grep -E '^(SLURM|SBATCH|SRUN|SALLOC)_'); do unset "$v"; done
unset DUME_HOME DUME_LAUNCHER
source "$DUME_SOURCE_DIR/slurm/local/common.sh"

# `fresh_dir NAME`: an empty $DUME_SLURM_WORK/NAME, made the working directory.
fresh_dir() {
  rm -rf "${DUME_SLURM_WORK:?}/$1"
  mkdir -p "$DUME_SLURM_WORK/$1"
  cd "$DUME_SLURM_WORK/$1"
}

# `small_config FILE OUTPUT [LAMBDA]`: the bundled demo with absolute paths, 16 calibration
# windows per domain (a merge takes seconds) and OUTPUT as its output.
small_config() {
  sed -e "s#\.\./experts/#$DUME_SOURCE_DIR/experts/#" -e 's/max_sequences: 0,/max_sequences: 16,/' \
      -e "s#^output: .*#output: $2#" -e '/^eval:/d' -e "s/lambda: [^,]*,/lambda: ${3:-1.0e-2},/" \
      "$DUME_SOURCE_DIR/configs/demo.yaml" > "$1"
}

# `submit ARGS...`: sbatch --parsable ARGS..., prints the job id.
submit() {
  local id
  id=$(sbatch --parsable "$@")
  echo "${id%%;*}"
}

# `wait_job ID [SECONDS]`: waits until the job (every element, for an array) has ended, then prints
# one line per job: "JobId JobState ExitCode" (ExitCode as Slurm writes it: code:signal), sorted
# by array index. Polls scontrol every 0.25 s (sbatch --wait checks only every 10 s). Cancels the
# job and fails after SECONDS (default 60).
wait_job() {
  local id=$1 limit=${2:-60} out
  local deadline=$((SECONDS + limit))
  while :; do
    out=$(scontrol show job -o "$id" 2>/dev/null || true)
    if [ -n "$out" ] &&
       ! grep -vqE ' JobState=(COMPLETED|FAILED|CANCELLED|TIMEOUT|OUT_OF_MEMORY|NODE_FAIL|BOOT_FAIL|DEADLINE|PREEMPTED) ' <<<"$out"; then
      break
    fi
    if [ $SECONDS -ge "$deadline" ]; then
      echo "job $id has not ended after $limit s; cancelling it:" >&2
      echo "$out" >&2
      scancel "$id" || true
      return 1
    fi
    sleep 0.25
  done
  awk '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
         print f["ArrayTaskId"] + 0, f["JobId"], f["JobState"], f["ExitCode"] }' <<<"$out" | sort -n | cut -d' ' -f2-
}

# `same_merge REFERENCE OUT`: OUT's moe.h5 and stats.h5 hold REFERENCE's datasets exactly (through
# their links; attributes aside); fails the test naming the first file that differs.
same_merge() {
  local f
  for f in moe.h5 stats.h5; do
    h5diff --follow-symlinks --exclude-attribute / "$1/$f" "$2/$f" || { echo "FAILED: $2/$f differs from $1/$f"; exit 1; }
  done
}
