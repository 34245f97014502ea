# Sourced by the job drivers (jobs/*.sh): runs dume as an MPI job. Inside a Slurm allocation
# (SLURM_JOB_ID set) srun starts the ranks (Debian's Open MPI works under srun through PMIx
# only); elsewhere mpirun starts them on this machine.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DUME=${DUME:-$here/../build/pipeline/dume}
[ -x "$DUME" ] || { echo "dume: not built at $DUME (build first, or set DUME=/path/to/dume)" >&2; exit 2; }

# `launch_config_job COMMAND CONFIG [RANKS] [OPTIONS...]`: the drivers' common form.
launch_config_job() {
  local command=$1 config=$2
  shift 2
  local ranks=
  if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+$ ]]; then ranks=$1; shift; fi
  launch "$ranks" "$command" "$config" "$@"
}

# `launch RANKS ARGS...`: runs `dume ARGS...` as an MPI job; its exit status is dume's. Inside
# Slurm srun starts RANKS ranks, or all the allocation's when RANKS is empty; elsewhere mpirun
# starts RANKS (default 1).
launch() {
  local ranks=$1
  shift
  if [ -n "${SLURM_JOB_ID:-}" ]; then
    srun --mpi=pmix ${ranks:+-n "$ranks"} "$DUME" "$@"
    return
  fi
  ranks=${ranks:-1}
  # --bind-to none: Open MPI pins each rank to one core when there are two ranks or fewer,
  # which would put all of a rank's compute threads on that one core.
  local flags=(--bind-to none)
  [ "$(id -u)" = 0 ] && flags+=(--allow-run-as-root)
  [ "$ranks" -gt "$(nproc)" ] && flags+=(--oversubscribe)
  # mpirun forwards SIGUSR1 to every rank but answers SIGINT and SIGTERM with SIGTERM and, one
  # second later, SIGKILL (Open MPI's odls_base_sigkill_timeout): too soon to save a checkpoint.
  # So mpirun runs in a session of its own (Ctrl-C reaches this script, not it) and each of the
  # three stop signals, and a hang-up (the terminal closed), is passed on as SIGUSR1: a merge or
  # fold-in saves and exits 75.
  setsid mpirun --quiet "${flags[@]}" -np "$ranks" "$DUME" "$@" &
  local job=$! rc
  trap 'kill -USR1 "$job" 2>/dev/null' INT TERM USR1 HUP
  while :; do
    rc=0
    wait "$job" || rc=$?  # (the drivers run under set -e)
    kill -0 "$job" 2>/dev/null || break  # a trapped signal ended the wait, not the job
  done
  trap - INT TERM USR1 HUP
  return "$rc"
}
