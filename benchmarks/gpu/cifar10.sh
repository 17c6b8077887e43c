#!/usr/bin/env bash
# Issue 11 at full scale on one GPU: benchmarks/bench_cifar10.py --profile gpu (all 50,000 CIFAR-10 (JPEG copy)
# training images, resnet20 teacher and resnet8 students for 30 epochs, 6 runs at a time on the GPU), tables in
# the CPU benchmark's order (pilot, catalogue, augmentation, backward, letkd, beyond); no run starts after
# BUDGET_S seconds (default 400) and the whole script stops at 9 minutes, keeping every finished table.
# On the device machine (archives in data/cifar10-jpeg/, wheels in .whl/: benchmarks/gpu/README.md):
#   run(command="bash benchmarks/gpu/cifar10.sh", carry=["data/cifar10-jpeg", ".whl"], timeout_s=560)
# Dry run on a CPU:  PYTHON=.venv/bin/python bash benchmarks/gpu/cifar10.sh --profile smoke --workers 2
set -uo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/gpu/env.sh  # $OUT, $PY, the carried wheels, src/ on the path
"$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" \
  | tee "$OUT/cifar10.log"
timeout 530 "$PY" benchmarks/bench_cifar10.py --profile gpu --data data/cifar10-jpeg --budget-s "${BUDGET_S:-400}" \
  --out "$OUT/cifar10" "$@" 2>&1 | tee -a "$OUT/cifar10.log"
rc=${PIPESTATUS[0]}
# keep the tables and logs, not the runs' weights
find "$OUT/cifar10" -name '*.safetensors' -delete 2>/dev/null || true
exit "$rc"
