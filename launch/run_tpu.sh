#!/usr/bin/env bash
# Cloud TPU VM or pod slice: run the same command on every worker.
#   launch/run_tpu.sh TPU_NAME ZONE configs/em.py /mnt/shared/runs/em
set -euo pipefail
name=${1:?tpu name}
zone=${2:?zone}
config=${3:?config}
workdir=${4:?workdir on a filesystem shared by the workers}
gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="
  cd focus_jax && python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]' &&
  .venv/bin/python -m focus_jax.train --config=$config --workdir=$workdir --distributed"
