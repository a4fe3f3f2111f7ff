#!/usr/bin/env bash
# On a machine with one NVIDIA GPU, from anywhere in the checkout: the GPU check (python -m bench.gpu_check,
# arguments passed on). Installs nothing and fetches nothing (such machines often have no internet): it
# expects a Python with torch (CUDA), transformers, peft, grpcio and Strata's other dependencies, e.g.
# from wheels installed beforehand (pip install --no-index) or on PYTHONPATH; bitsandbytes for the 4-bit
# runs. Python: $PYTHON, else .venv/bin/python, else python3.
# With $OUT set, the report goes to $OUT/gpu_check.md and the whole output to $OUT/gpu_check.log.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-}"
if [ -z "$py" ]; then
    if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# `strata worker` and `strata coordinator` find their commands through the package's entry points: where
# strata-fl is not installed, write its metadata (strata_fl.egg-info, git-ignored) here, offline
commands='from strata.cli import commands; import sys; sys.exit(not {"worker", "coordinator"} <= set(commands()))'
if ! "$py" -c "$commands" 2>/dev/null; then
    echo "gpu_check.sh: writing strata_fl.egg-info (the strata commands' entry points)" >&2
    "$py" -c 'from setuptools import setup; setup()' -q egg_info >/dev/null 2>&1 || true
fi

args=("$@")
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    args=(--out "$OUT/gpu_check.md" "${args[@]}")
    "$py" -m bench.gpu_check "${args[@]}" 2>&1 | tee "$OUT/gpu_check.log"
else
    "$py" -m bench.gpu_check "${args[@]}"
fi
