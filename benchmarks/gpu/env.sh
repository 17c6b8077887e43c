# Sourced by check.sh and cifar10.sh, from the repository root: $OUT exists, $PY is the interpreter, kdlab's
# src/ is importable. The GPU image has torch but not pydantic: the carried wheels (.whl/, git-ignored) are
# installed into /tmp/site when `import pydantic` fails.
OUT=${OUT:-benchmarks/gpu/out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
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
