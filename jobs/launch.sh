# Sourced by the job drivers: `launch RANKS ARGS...` runs `dume ARGS...` as an MPI job.
# Inside a Slurm allocation (SLURM_JOB_ID set) the ranks come from the allocation and srun
# starts them (Debian's Open MPI works under srun through PMIx only); elsewhere mpirun starts
# RANKS ranks on this machine.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DUME=${DUME:-$here/../build/pipeline/dume}
[ -x "$DUME" ] || { echo "dume: not built at $DUME (build first, or set DUME=/path/to/dume)" >&2; exit 2; }

# `launch_config_job COMMAND CONFIG [RANKS] [OPTIONS...]`: the drivers' common form.
launch_config_job() {
  local command=$1 config=$2
  shift 2
  local ranks=1
  if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+$ ]]; then ranks=$1; shift; fi
  launch "$ranks" "$command" "$config" "$@"
}

launch() {
  local ranks=$1
  shift
  if [ -n "${SLURM_JOB_ID:-}" ]; then
    exec srun --mpi=pmix "$DUME" "$@"
  fi
  local flags=()
  [ "$(id -u)" = 0 ] && flags+=(--allow-run-as-root)
  [ "$ranks" -gt "$(nproc)" ] && flags+=(--oversubscribe)
  exec mpirun "${flags[@]}" -np "$ranks" "$DUME" "$@"
}
