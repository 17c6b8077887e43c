#!/usr/bin/env bash
# The GPU check of issue 12 (benchmarks/gpu/README.md): tests, throughput, end to end, projection.
# On the GPU machine, from the repository root:   bash benchmarks/gpu/check.sh
# Dry run on a CPU:  PYTHON=.venv/bin/python bash benchmarks/gpu/check.sh --device cpu --smoke
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-benchmarks/gpu/out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
# The GPU image has torch but not pydantic: install the carried wheels (.whl/, git-ignored) first.
if ! "$PY" -c "import pydantic" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || { echo "installing the carried wheels failed"; exit 1; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "pydantic is missing and no wheels were carried in .whl/ (benchmarks/gpu/README.md)"; exit 1
  fi
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export KDLAB_CACHE=${KDLAB_CACHE:-/tmp/kdlab-gpu-check-cache}
timeout 480 "$PY" benchmarks/gpu/check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/check.log"
