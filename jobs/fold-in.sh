#!/usr/bin/env bash
# Folds experts of new domains into an existing MoE as an MPI job (see `dume fold-in --help`).
# usage: jobs/fold-in.sh CONFIG.yaml [RANKS] [--force] [--reaverage]
#   RANKS (default 1) is used outside Slurm; inside an allocation srun takes the ranks from it.
set -euo pipefail
source "$(dirname "$0")/launch.sh"
[ $# -ge 1 ] || { sed -n '3,4p' "$0" >&2; exit 2; }
launch_config_job fold-in "$@"
