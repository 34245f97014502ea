# Sourced by the sbatch templates (slurm/*.sbatch) once they have found the dume checkout
# ($DUME_HOME): runs one job driver (jobs/*.sh) as the job's work and exits with its exit code.
# Not a job script itself; it starts nothing when sourced.

# `dume_job COMMAND ARGS...`: runs COMMAND (a jobs/ driver, or dume_launch) in the background so
# that this shell can take Slurm's warning signal, and exits with COMMAND's exit code, which for
# the drivers is srun's (or mpirun's): the highest exit code of dume's ranks.
#
# The warning: `--signal=B:USR1@120` sends SIGUSR1 to this shell 120 s before the time limit. It
# is passed on to the launcher (srun or mpirun, the driver's child), which forwards it to the
# ranks: dume merge saves a checkpoint at the next batch boundary and every rank exits with 75
# ("stopped, resumable"); commands without checkpoints end on it. SIGTERM (scancel, or the limit
# itself) reaches the ranks from Slurm directly and stops a merge the same way.
#
# Requeue: with DUME_REQUEUE=1 (e.g. `sbatch --requeue --export=ALL,DUME_REQUEUE=1 ...`), a job
# that stopped with 75 after the warning requeues itself (scontrol requeue); the merge template
# passes --resume to a restarted job (SLURM_RESTART_COUNT > 0), so it continues from the
# checkpoint, on the new allocation's ranks.
#
# DUME_LAUNCHER=mpirun (e.g. `sbatch --export=ALL,DUME_LAUNCHER=mpirun ...`) starts the ranks with
# `mpirun -np RANKS` instead of `srun --mpi=pmix`, for sites whose MPI does not work under srun.
# The drivers choose srun whenever SLURM_JOB_ID is set, so it is hidden from them, and the
# templates pass RANKS = $SLURM_NTASKS (srun ignores it); Open MPI's mpirun still finds the
# allocation's nodes through SLURM_JOBID and SLURM_NODELIST and starts its daemons there with srun.
dume_job() {
  # Since Slurm 22.05 srun no longer takes --cpus-per-task from the job; this passes it on.
  [ -n "${SLURM_CPUS_PER_TASK:-}" ] && export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK
  local dume_job_pid= dume_warned=
  # Set before the command starts (which resets it to the default for itself): a SIGUSR1 to this
  # shell with no trap would end it and leave the ranks running. The signal goes to the launcher
  # below the command, not to the command: a driver script would end on it, leaving the launcher
  # running.
  trap 'echo "dume: SIGUSR1 (time limit near): passing it to the ranks; a merge saves a checkpoint and stops" >&2
        dume_warned=1
        dume_signal_launchers USR1 "$dume_job_pid"' USR1
  echo "# dume: job ${SLURM_JOB_ID:-(not in Slurm)}${SLURM_ARRAY_TASK_ID:+ (array index $SLURM_ARRAY_TASK_ID)}" \
       "on ${SLURM_JOB_NODELIST:-$(hostname -s)}, ${SLURM_NTASKS:-1} task(s): ${1#"$DUME_HOME/"} ${*:2}"
  case ${DUME_LAUNCHER:-srun} in
    srun) "$@" & ;;
    mpirun) (unset SLURM_JOB_ID; "$@") & ;;
    *) echo "dume: DUME_LAUNCHER=$DUME_LAUNCHER: use srun or mpirun" >&2; exit 2 ;;
  esac
  dume_job_pid=$!
  # `wait` returns early when a trapped signal arrives: wait again until the command has ended.
  local rc=0
  wait "$dume_job_pid" || rc=$?
  while kill -0 "$dume_job_pid" 2>/dev/null; do
    rc=0
    wait "$dume_job_pid" || rc=$?
  done
  [ "$rc" = 0 ] || echo "dume: job ended with exit code $rc" >&2
  if [ "$rc" = 75 ] && [ -n "$dume_warned" ] && [ "${DUME_REQUEUE:-0}" = 1 ] && [ -n "${SLURM_JOB_ID:-}" ]; then
    echo "dume: requeueing job $SLURM_JOB_ID: it resumes from its checkpoint when it runs again" >&2
    scontrol requeue "$SLURM_JOB_ID"
  fi
  exit "$rc"
}

# `dume_signal_launchers SIGNAL PID`: sends SIGNAL to the launchers (srun, mpirun) among PID and
# its descendants; they forward it to the ranks.
dume_signal_launchers() {
  local signal=$1 pids=$2 next p
  while [ -n "$pids" ]; do
    next=
    for p in $pids; do
      case $(cat "/proc/$p/comm" 2>/dev/null) in
        srun|mpirun|mpiexec|orterun|prterun) kill -"$signal" "$p" 2>/dev/null; continue ;;
      esac
      next+=" $(grep -l "^PPid:[[:space:]]*$p\$" /proc/[0-9]*/status 2>/dev/null | cut -d/ -f3 | xargs)"
    done
    pids=$(xargs <<<"$next")
  done
}

# `dume_resume_option`: --resume for a job that Slurm restarted (requeued), else nothing.
dume_resume_option() {
  [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ] && echo --resume
  return 0
}

# `dume_launch COMMAND ARGS...`: `dume COMMAND ARGS...` on the allocation's ranks, through the
# drivers' launcher (jobs/launch.sh), for commands without a driver of their own.
dume_launch() {
  source "$DUME_HOME/jobs/launch.sh"
  launch "${SLURM_NTASKS:-1}" "$@"
}
