#!/usr/bin/env bash
# SkyPilot's `run` step on every node (every host of a TPU slice): python -m mlm_jax.main
# $MLM_ARGS, the arguments shell-quoted exactly as `experiments/sweep.py --launch=print` prints
# them. Several GPU nodes join one JAX program through SkyPilot's node list; a TPU slice's hosts
# find each other from the TPU metadata (MLM_JAX_DISTRIBUTED=1: no flags added). The workdir must
# be gs://: a VM relaunched after a preemption resumes from the checkpoints there, on a new disk.
set -euo pipefail
case " ${MLM_ARGS} " in
  *" --workdir=gs://"*) ;;
  *) echo "error: MLM_ARGS needs --workdir=gs://...; got: ${MLM_ARGS}" >&2; exit 2 ;;
esac
. ~/mlm_jax_venv/bin/activate
hosts=""
if [ "${MLM_JAX_DISTRIBUTED:-0}" != 1 ] && [ "${SKYPILOT_NUM_NODES:-1}" -gt 1 ]; then
  head_ip=$(echo "${SKYPILOT_NODE_IPS}" | head -n1)
  hosts="--coordinator_address=${head_ip}:12355 --num_processes=${SKYPILOT_NUM_NODES}"
  hosts="${hosts} --process_id=${SKYPILOT_NODE_RANK}"
fi
eval "exec python -m mlm_jax.main ${MLM_ARGS} ${hosts}"
