#!/usr/bin/env bash
# SkyPilot's `setup` step on every node of a launch/*.yaml task: a Python 3.11 venv (the pins
# need >= 3.11; TPU VM images ship 3.10, so uv fetches 3.11) with mlm_jax, requirements.txt and
# the jax[$MLM_JAX_EXTRA] build (tpu or cuda12) at the jax version pinned there.
set -euo pipefail
if [ ! -x ~/mlm_jax_venv/bin/python ]; then
  python3 -m pip install --quiet --user uv
  python3 -m uv venv --python 3.11 ~/mlm_jax_venv
fi
jax_pin=$(grep -E '^jax==' requirements.txt | cut -d= -f3 | cut -d' ' -f1)
python3 -m uv pip install --quiet --python ~/mlm_jax_venv/bin/python \
  -r requirements.txt -e . "jax[${MLM_JAX_EXTRA}]==${jax_pin}"
