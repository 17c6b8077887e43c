#!/usr/bin/env bash
# The GPU check of issue 12 (benchmarks/gpu/README.md): tests, throughput, end to end, projection.
# On the GPU machine, from the repository root:   bash benchmarks/gpu/check.sh
# Dry run on a CPU:  PYTHON=.venv/bin/python bash benchmarks/gpu/check.sh --device cpu --smoke
set -uo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/gpu/env.sh  # $OUT, $PY, the carried wheels, src/ on the path
timeout 480 "$PY" benchmarks/gpu/check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/check.log"
