#!/usr/bin/env bash
# ctest fixture cleanup (slurm.down): stops the local Slurm if slurm.up started it, and checks
# that none of its daemons is left.
source "$(dirname "$0")/common.sh"
if [ ! -f "$DUME_SLURM_DIR/started-by-ctest" ]; then
  echo "local Slurm not started by ctest: left as it is"
  exit 0
fi
pids=()
for d in slurmctld slurmd munged; do
  pid=$(daemon_pid "$d" "$(dume_slurm_pidfile "$d")") && pids+=("$d:$pid")
done
"$DUME_SOURCE_DIR/slurm/local/down.sh"
for p in "${pids[@]}"; do
  name=${p%%:*} pid=${p#*:}
  state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$pid/status" 2>/dev/null || true)
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != "$name" ] || [ "$state" = Z ] || { echo "FAILED: $name ($pid) still runs" >&2; exit 1; }
done
[ ! -e "$DUME_SLURM_DIR" ] || { echo "FAILED: $DUME_SLURM_DIR is left" >&2; exit 1; }
