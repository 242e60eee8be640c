#!/usr/bin/env bash
# One device run that measures everything RESULTS.md's GPU section needs (see ../shared/gpu/README.md).
#
# Here, before the run:
#   ../shared/gpu/wheels.sh                       # the missing wheels, into .whl/
#   prefalign build-demo demo                     # the demo models, if not cached yet
#   mkdir -p .demo-cache/models && cp -r ~/.cache/prefalign/models/demo-* .demo-cache/models/
#   echo /.demo-cache/ >> .git/info/exclude
# Then run, carrying [".whl", ".demo-cache"], with a timeout_s of at least 600:
#   bash benchmarks/gpu_check.sh
# Outputs land in $OUT (or ./gpu-check), one file per part; each part has its own time limit, in
# priority order, so a slow part costs only itself. Nothing else should use the GPU meanwhile.
# PARTS="steps gpu" (any of: steps sample gpu precision profile steps-x4) runs only those parts.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-check}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PREFALIGN_CACHE=$PWD/.demo-cache \
  TOKENIZERS_PARALLELISM=false
base=/tmp/prefalign-bench-base   # GPT-2-small / DistilBERT-base shaped, random weights (bench_engine builds them)
parts=" ${PARTS:-steps sample gpu precision profile steps-x4} "
part() {  # part NAME SECONDS COMMAND...: run one measurement into $out/NAME.txt
  local name=$1 limit=$2; shift 2
  [[ $parts == *" $name "* ]] || return 0
  echo "== $name (limit ${limit}s): $*" | tee "$out/$name.txt"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | grep -v -e "Warning" -e "warnings.warn" | tee -a "$out/$name.txt"
  echo "== $name: rc ${PIPESTATUS[0]}, $((SECONDS - t0))s" | tee -a "$out/$name.txt"
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers, trl; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__)"
  nproc; } 2>&1 | tee "$out/machine.txt"
# 1. Training step of the seed recipe: stock TRL (a9ca438's path) and the lean trainer per precision.
part steps 130 python3 benchmarks/bench_engine.py steps --models gpt2-small --device cuda --steps 200 --warm 20 \
  --variants stock-fp32,lean-fp32,lean-tf32-syncs,lean-tf32,lean-bf16
# 2. Sample + score: the original loop against the engine, same models, same GPU.
part sample 80 python3 benchmarks/bench_engine.py sample --models gpt2-small --device cuda --n 5000 --reps 1
# 3. The pipeline end to end at full batch sizes, the recipe's precision, the four grid models side by side.
part gpu 170 python3 benchmarks/gpu.py --fraction 0.1 --side-by-side 4 --models "$base"
# 4. fp32 vs TF32 vs bf16 training on the demo models (rewards that mean something), 6 variants at once.
part precision 130 python3 benchmarks/precision.py --device cuda --precisions tf32,bf16 --jobs 6
# 5. Where the time goes: torch.profiler tables of a decode loop, the whole sample + score engine and training steps.
part profile 120 python3 benchmarks/profile_gpu.py --batch 2048 --precision tf32 --models "$base"
# 6. What one model leaves idle: four trainings of the lean bf16 step at once (compare with part 1).
part steps-x4 40 bash -c 'for i in 1 2 3 4; do python3 benchmarks/bench_engine.py steps --models gpt2-small \
  --device cuda --steps 200 --warm 20 --variants lean-tf32 & done; wait'
nvidia-smi --query-gpu=name,utilization.gpu,memory.used --format=csv | tee -a "$out/machine.txt"
