#!/usr/bin/env bash
# ranks.resume_SCENARIO (label mpi): a merge under mpirun (3 domains x 63 batches, a checkpoint
# every 2 batches of a rank) is interrupted, then resumed on another number of ranks.
#   throw          rank 1 throws after 8 batches (test hook)        3 ranks, resumed on 2
#   kill9          `kill -9` of rank 1's process while it runs        2 ranks, resumed on 3
#   kill_root      rank 0 raises SIGKILL on itself (test hook)        2 ranks, resumed on 1
#   sigterm_job    SIGTERM to mpirun                                  2 ranks, resumed on 3
#   sigterm_ranks  SIGTERM to every rank (what Slurm does at a limit) 3 ranks, resumed on 2
#   usr1_job       SIGUSR1 to mpirun (forwarded to the ranks)         2 ranks, resumed on 1
#   sigint_ranks   SIGINT to every rank (Ctrl-C)                      2 ranks, resumed on 3
#   {sigint,sigterm,usr1}_driver  the signal to the job driver (jobs/launch.sh, which passes
#                  each on to mpirun as SIGUSR1)                      2 ranks, resumed on 1
#   fold_in_usr1   a fold-in (a third domain into out_fold_base), SIGUSR1 to mpirun
#                                                                     2 ranks, resumed on 3
# Checks: a non-zero exit (75 for a clean stop) within seconds, the expected message, no output
# and no temporary or lock beside it (only OUT.checkpoint), then a --resume that completes and
# removes the checkpoint. ResumeResults compares the outputs with the uninterrupted merge (and
# fold_in_usr1's with the uninterrupted fold-in).
# Environment (from ctest): DUME (the binary), DUME_RESUME_DIR, MPIEXEC.
set -uo pipefail
scenario=${1:?usage: faults.sh SCENARIO}
dume=${DUME:?} mpiexec=${MPIEXEC:-mpirun}
cd "${DUME_RESUME_DIR:?}" || exit 1
out=out_$scenario
rm -rf "$out" "$out.checkpoint" "$scenario".log
fail() { echo "FAILED ($scenario): $*"; echo "--- log:"; cat "$scenario.log"; exit 1; }
now() { date +%s%3N; }  # ms
# Not a function: a background function would be a subshell, and $! its pid, not mpirun's.
mpirun=("$mpiexec" --oversubscribe --bind-to none -np)
command=merge
case $scenario in fold_in_*) command=fold-in ;; esac
launcher=$(cd "$(dirname "$0")/../../jobs" && pwd)/launch.sh

# Starts the merge in the background on $1 ranks, slowed down so that it runs for seconds, and
# returns once a first checkpoint is on disk (job=mpirun's pid).
# With `driver` as $2, through jobs/launch.sh (job = the driver's shell; job control on, since
# a background job of a script would otherwise ignore SIGINT).
start_slow() {
  if [ "${2:-}" = driver ]; then
    set -m
    DUME_TEST_BATCH_DELAY_MS=25 bash -c 'source "$0"; launch "$@"' "$launcher" "$1" "$command" "$scenario.yaml" \
      >"$scenario.log" 2>&1 &
    job=$!
    set +m
  else
    DUME_TEST_BATCH_DELAY_MS=25 "${mpirun[@]}" "$1" "$dume" "$command" "$scenario.yaml" >"$scenario.log" 2>&1 &
    job=$!
  fi
  for _ in $(seq 600); do
    compgen -G "$out.checkpoint/domain-*.h5" >/dev/null && return
    kill -0 "$job" 2>/dev/null || fail "the merge ended before its first checkpoint"
    sleep 0.05
  done
  fail "no checkpoint after 30 s"
}
# The pids of the ranks mpirun started (its children), and that of rank $1.
ranks() { grep -l "^PPid:[[:space:]]*$job\$" /proc/[0-9]*/status 2>/dev/null | cut -d/ -f3; }
rank_pid() {
  for p in $(ranks); do
    tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$1" && { echo "$p"; return; }
  done
}
# Waits for the job; rc = its exit code, took = ms since $1.
finish() {
  wait "$job"
  rc=$?
  took=$(($(now) - $1))
}

case $scenario in
  throw|kill_root)
    if [ "$scenario" = throw ]; then fault=1:8:throw np=3 again=2; else fault=0:10:kill np=2 again=1; fi
    t0=$(now)
    DUME_TEST_FAULT=$fault "${mpirun[@]}" "$np" "$dume" merge "$scenario.yaml" >"$scenario.log" 2>&1
    rc=$?
    took=$(($(now) - t0))
    ;;
  kill9)
    np=2 again=3
    start_slow "$np"
    victim=$(rank_pid 1)
    [ -n "$victim" ] || fail "rank 1's process not found among mpirun's children ($(ranks | xargs))"
    t0=$(now)
    kill -9 "$victim"
    finish "$t0"
    ;;
  sigterm_job|usr1_job|fold_in_usr1)
    case $scenario in sigterm_job) signal=TERM np=2 again=3 ;; usr1_job) signal=USR1 np=2 again=1 ;;
                      *) signal=USR1 np=2 again=3 ;; esac
    start_slow "$np"
    t0=$(now)
    kill -"$signal" "$job"
    finish "$t0"
    ;;
  sigterm_ranks|sigint_ranks)
    if [ "$scenario" = sigterm_ranks ]; then signal=TERM np=3 again=2; else signal=INT np=2 again=3; fi
    start_slow "$np"
    t0=$(now)
    kill -"$signal" $(ranks)
    finish "$t0"
    ;;
  sigint_driver|sigterm_driver|usr1_driver)
    signal=${scenario%_driver} np=2 again=1
    signal=${signal#sig}
    start_slow "$np" driver
    t0=$(now)
    kill -"${signal^^}" "$job"
    finish "$t0"
    ;;
  *) echo "unknown scenario $scenario"; exit 2 ;;
esac

case $scenario in
  throw|kill_root) echo "# $scenario: exit code $rc, the whole job (start, fault, teardown) took $took ms" ;;
  *) echo "# $scenario: exit code $rc, the job ended $took ms after the fault" ;;
esac
grep -E "^dume: |mpirun|exited on signal|MPI_ABORT" "$scenario.log" | head -5 | sed 's/^/#   /'
[ "$rc" != 0 ] || fail "exit code 0"
[ "$took" -lt 15000 ] || fail "the job took $took ms to end"
case $scenario in
  throw) expected="^dume: error: \[rank 1 on .*\] test fault: rank 1 fails after 8 batches" ;;
  kill9|kill_root) expected="exited on signal 9" ;;
  sigterm_job) expected="." ;;  # mpirun's own way (see the README): only the exit code is checked
  sigterm_ranks) expected="^dume: stopped by SIGTERM while calibrating domain '.*'; checkpoint saved in .*--resume" ;;
  sigint_ranks) expected="^dume: stopped by SIGINT while calibrating domain '.*'; checkpoint saved in .*--resume" ;;
  usr1_job|*_driver) expected="^dume: stopped by SIGUSR1 while calibrating domain '.*'; checkpoint saved in .*dume merge. with --resume" ;;
  fold_in_usr1) expected="^dume: stopped by SIGUSR1 while calibrating domain 'd2'; checkpoint saved in .*dume fold-in. with --resume" ;;
esac
grep -qE "$expected" "$scenario.log" || fail "no line matching '$expected'"
case $scenario in
  sigterm_ranks|sigint_ranks|usr1_job|*_driver|fold_in_usr1)
    [ "$rc" = 75 ] || fail "exit code $rc, expected 75 (stopped, resumable)"
    [ "$(grep -c '^dume' "$scenario.log")" = 1 ] || fail "not exactly one dume line" ;;
esac
[ ! -e "$out" ] || fail "$out exists after the failure"
leftovers=$(compgen -G ".$out.tmp-*"; [ "$rc" != 75 ] || compgen -G ".$out.lock")  # a killed job's lock stays
[ -z "$leftovers" ] || fail "temporaries left: $leftovers"
[ -d "$out.checkpoint" ] || fail "no checkpoint $out.checkpoint"
echo "# $scenario: checkpoint files: $(ls "$out.checkpoint" | xargs)"

"${mpirun[@]}" "$again" "$dume" "$command" "$scenario.yaml" --resume >>"$scenario.log" 2>&1 || fail "--resume on $again ranks failed"
grep -q "^# dume: resuming from .*$out.checkpoint" "$scenario.log" || fail "the resumed merge did not say it resumed"
[ -f "$out/moe.h5" ] && [ -f "$out/stats.h5" ] || fail "no output after --resume"
[ ! -e "$out.checkpoint" ] || fail "the checkpoint is left after the resumed merge"
echo "# $scenario: resumed on $again ranks: $(grep -c 'batches from the checkpoint' "$scenario.log") domain(s) partly or wholly from the checkpoint"
