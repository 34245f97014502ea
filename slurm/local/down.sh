#!/usr/bin/env bash
# Stops the local Slurm that slurm/local/up.sh started: cancels its jobs, stops slurmd, slurmctld
# and (if up.sh started it) munged by their PID files, then removes $DUME_SLURM_DIR.
# usage: slurm/local/down.sh      (nothing to do when it is not up: exits 0)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/common.sh"
[ $# -eq 0 ] || { sed -n '4p' "$0" >&2; exit 2; }

if [ ! -e "$DUME_SLURM_DIR" ]; then
  echo "local Slurm is not up (no $DUME_SLURM_DIR)"
  exit 0
fi

[ "$(id -u)" = 0 ] || { echo "down.sh: must run as root (it stops the daemons up.sh started as root)" >&2; exit 1; }

# Running jobs first, so that no slurmstepd or rank outlives slurmd.
if daemon_pid slurmctld "$(dume_slurm_pidfile slurmctld)" >/dev/null; then
  mapfile -t jobs < <(squeue -h -o %A 2>/dev/null || true)
  if [ ${#jobs[@]} -gt 0 ]; then
    echo "cancelling jobs: ${jobs[*]}"
    scancel "${jobs[@]}" || true
    for _ in $(seq 100); do
      [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break
      sleep 0.1
    done
  fi
fi

# TERM each daemon by its PID file, after checking the PID is still that daemon; KILL after 10 s.
# munged has a PID file here only when up.sh started it: one started by the package is left alone.
for d in slurmd slurmctld munged; do
  pid=$(daemon_pid "$d" "$(dume_slurm_pidfile "$d")") || continue
  kill -TERM "$pid"
  for _ in $(seq 100); do
    daemon_pid "$d" "$(dume_slurm_pidfile "$d")" >/dev/null || break
    sleep 0.1
  done
  if daemon_pid "$d" "$(dume_slurm_pidfile "$d")" >/dev/null; then
    echo "$d ($pid) ignored TERM for 10 s: killing it"
    kill -KILL "$pid"
  fi
  echo "stopped $d ($pid)"
done

dume_slurm_remove_dir
echo "local Slurm is down"
