#!/usr/bin/env bash
# ctest fixture setup (slurm.up): starts the local Slurm with slurm/local/up.sh, unless it is up
# already; then slurm.down stops it only if a ctest run started it (marked in its directory).
source "$(dirname "$0")/common.sh"
if "$DUME_SOURCE_DIR/slurm/local/up.sh" --status >/dev/null; then
  if [ -f "$DUME_SLURM_DIR/started-by-ctest" ]; then
    echo "local Slurm already up, started by an earlier ctest run: slurm.down will stop it"
  else
    echo "local Slurm already up, started by hand: the tests use it and slurm.down leaves it up"
  fi
  exit 0
fi
"$DUME_SOURCE_DIR/slurm/local/up.sh"
touch "$DUME_SLURM_DIR/started-by-ctest"
