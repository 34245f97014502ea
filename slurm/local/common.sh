# Sourced by slurm/local/up.sh, down.sh and the slurm tests: where the local one-node Slurm keeps
# its files (configuration, state, spool, logs, PID files), and how to tell its daemons are alive.
DUME_SLURM_DIR=${DUME_SLURM_DIR:-/tmp/dume-slurm}
export SLURM_CONF=$DUME_SLURM_DIR/slurm.conf
dume_slurm_node=$(hostname -s)

# `daemon_pid NAME PIDFILE`: prints the PID in PIDFILE if that process is alive, is NAME
# (/proc/PID/comm) and is not a zombie; fails otherwise. PIDs get reused: never signal a PID
# from a file without this check.
daemon_pid() {
  local pid state
  [ -r "$2" ] && read -r pid < "$2" && [[ $pid =~ ^[0-9]+$ ]] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] || return 1
  state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$pid/status" 2>/dev/null)
  [ -n "$state" ] && [ "$state" != Z ] || return 1
  echo "$pid"
}

# Our daemons and their PID files (munged's only exists when up.sh started munged itself).
dume_slurm_pidfile() {
  case $1 in
    munged) echo "$DUME_SLURM_DIR/munge/munged.pid" ;;
    *) echo "$DUME_SLURM_DIR/run/$1.pid" ;;
  esac
}

# Succeeds when our slurmctld and slurmd run and the node takes jobs.
dume_slurm_up() {
  daemon_pid slurmctld "$(dume_slurm_pidfile slurmctld)" >/dev/null &&
    daemon_pid slurmd "$(dume_slurm_pidfile slurmd)" >/dev/null &&
    [[ $(sinfo -h -N -o %T 2>/dev/null) =~ ^(idle|mixed|allocated|completing)$ ]]
}

# Removes $DUME_SLURM_DIR if up.sh made it (it holds up.sh's marker file); refuses any other
# directory, so a mistyped DUME_SLURM_DIR cannot delete someone's files.
dume_slurm_remove_dir() {
  [ -e "$DUME_SLURM_DIR" ] || return 0
  if [ ! -f "$DUME_SLURM_DIR/.dume-local-slurm" ]; then
    echo "$DUME_SLURM_DIR was not made by slurm/local/up.sh: not removing it" >&2
    return 1
  fi
  rm -rf "$DUME_SLURM_DIR"
}
