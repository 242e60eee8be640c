#!/usr/bin/env bash
# One device run that measures everything RESULTS.md's GPU section needs (see ../shared/gpu/README.md).
#
# Here, before the run:
#   ../shared/gpu/wheels.sh                       # the missing wheels, into .whl/
#   prefalign build-demo demo                     # the demo models, if not cached yet
#   mkdir -p .demo-cache/models && cp -r ~/.cache/prefalign/models/demo-* .demo-cache/models/
#   echo /.demo-cache/ >> .git/info/exclude
# Then run, carrying [".whl", ".demo-cache"], with a timeout_s that leaves room for a rerun:
#   bash benchmarks/gpu_check.sh
# Outputs land in $OUT (or ./gpu-check): the gpu.py table, and the fp32-vs-bf16 comparison on the
# demo models (the part skipped, with a message, when .demo-cache is missing).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-check}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PREFALIGN_CACHE=$PWD/.demo-cache
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
git rev-parse HEAD 2>/dev/null | tee -a "$out/gpu.txt"
# The quick check: full batch sizes, a tenth of the training steps, 1 of the 10 evaluation runs.
timeout 330 python3 benchmarks/gpu.py --fraction 0.1 2>&1 | tee "$out/gpu-fraction-0.1.txt"
if [ -d .demo-cache/models ]; then
  timeout 240 python3 benchmarks/precision.py --device cuda 2>&1 | tee "$out/precision-cuda.txt"
else
  echo "no .demo-cache/models: skipping the precision comparison" | tee "$out/precision-cuda.txt"
fi
