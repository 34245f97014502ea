#!/usr/bin/env bash
# Runs a DUME merge as an MPI job.
# usage: jobs/merge.sh CONFIG.yaml [RANKS] [--force]
#   RANKS (default 1) is used outside Slurm; inside an allocation srun takes the ranks from it.
set -euo pipefail
source "$(dirname "$0")/launch.sh"
[ $# -ge 1 ] || { sed -n '3,4p' "$0" >&2; exit 2; }
launch_config_job merge "$@"
