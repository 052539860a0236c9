#!/usr/bin/env bash
# Multi-host GPU training without a scheduler: run this on every host.
#   COORDINATOR=host0:1234 NUM_PROCESSES=2 PROCESS_ID=<0|1> launch/multi_host_gpu.sh configs/em.py runs/em
set -euo pipefail
config=${1:?config file}
workdir=${2:?shared workdir}
exec python -m focus_jax.train --config="$config" --workdir="$workdir" --distributed \
  --coordinator="${COORDINATOR:?host:port of process 0}" \
  --num_processes="${NUM_PROCESSES:?number of hosts}" --process_id="${PROCESS_ID:?this host}"
