# Sourced by the sbatch templates (slurm/*.sbatch) once they have found the dume checkout
# ($DUME_HOME): runs one job driver (jobs/*.sh) as the job's work and exits with its exit code.
# Not a job script itself; it starts nothing when sourced.

# `dume_job COMMAND ARGS...`: runs COMMAND (a jobs/ driver, or dume_launch) in the background so
# that this shell can take Slurm's warning signal, and exits with COMMAND's exit code, which for
# the drivers is srun's (or mpirun's): the highest exit code of dume's ranks.
#
# The warning: `--signal=B:USR1@120` sends SIGUSR1 to this shell 120 s before the time limit and
# it is passed on to the ranks (srun and mpirun both forward SIGUSR1 to the processes they
# started). dume does not catch it yet: checkpoint/resume on that signal arrives with the
# reliability issue. Today the ranks end on it (SIGUSR1's default action), and so does the job,
# with a non-zero exit code and a line in the error log saying why.
#
# DUME_LAUNCHER=mpirun (e.g. `sbatch --export=ALL,DUME_LAUNCHER=mpirun ...`) starts the ranks with
# `mpirun -np RANKS` instead of `srun --mpi=pmix`, for sites whose MPI does not work under srun.
# The drivers choose srun whenever SLURM_JOB_ID is set, so it is hidden from them, and the
# templates pass RANKS = $SLURM_NTASKS (srun ignores it); Open MPI's mpirun still finds the
# allocation's nodes through SLURM_JOBID and SLURM_NODELIST and starts its daemons there with srun.
dume_job() {
  # Since Slurm 22.05 srun no longer takes --cpus-per-task from the job; this passes it on.
  [ -n "${SLURM_CPUS_PER_TASK:-}" ] && export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK
  local dume_job_pid=
  # Set before the command starts (which resets it to the default for itself): a SIGUSR1 to this
  # shell with no trap would end it and leave the ranks running.
  trap 'echo "dume: SIGUSR1 (time limit near): passing it to the ranks; dume has no checkpoint/resume yet, so the job ends now" >&2
        kill -USR1 "$dume_job_pid" 2>/dev/null' USR1
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
  exit "$rc"
}

# `dume_launch COMMAND ARGS...`: `dume COMMAND ARGS...` on the allocation's ranks, through the
# drivers' launcher (jobs/launch.sh), for commands without a driver of their own.
dume_launch() {
  source "$DUME_HOME/jobs/launch.sh"
  launch "${SLURM_NTASKS:-1}" "$@"
}
