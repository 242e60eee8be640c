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
# priority order, so a slow part costs only itself (the default parts' limits add up to 9 min 20 s;
# with the wheels' install about 9.5). Nothing else should use the GPU meanwhile. PARTS="steps gpu"
# (any of: steps sample gpu precision profile) runs only those parts, in this file's order;
# STEP_VARIANTS, PROFILE_PARTS and <PART>_LIMIT (seconds) change what the steps and profile parts
# measure and how long a part may take.
#
# SMOKE=1 bash benchmarks/gpu_check.sh runs every part here, on the CPU, with the tiny built-in models
# and tiny counts (a few minutes on 2 cores, outputs in ./gpu-check): it checks the script and its
# commands before GPU time is spent on them, and measures nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [[ -n ${SMOKE:-} ]]; then
  py=${PYTHON:-.venv/bin/python} device=cpu models=tiny n=200 fraction=0.01 seeds=0,1 jobs=2 preset=tiny batch=64
  steps=(--steps 6 --warm 2) side=2 smaller=(--set sampling.num_samples=1000 --set evaluate.samples=500)
  base=$($py -c "from prefalign.models.builtin import build; from prefalign.models.specs import SPECS; print(build(SPECS['tiny']))") || exit 1
else
  py=python3 device=cuda models=gpt2-small n=5000 fraction=0.05 seeds=0,1,2,3,4 jobs=11 preset=demo batch=2048
  steps=(--steps 150 --warm 30) side=4 smaller=()
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src PREFALIGN_CACHE=$PWD/.demo-cache
  base=/tmp/prefalign-bench-base   # GPT-2-small / DistilBERT-base shaped, random weights (bench_engine builds them)
fi
parts=" ${PARTS:-steps gpu precision profile} "   # sample: only when asked for
part() {  # part NAME SECONDS COMMAND...: run one measurement into $out/NAME.txt
  local name=$1 limit=$2; shift 2
  [[ $parts == *" $name "* ]] || return 0
  echo "== $name (limit ${limit}s): $*" | tee "$out/$name.txt"
  local t0=$SECONDS
  # Library warnings dropped, but not a fallback from a compiled step (its message names compile_step).
  timeout "$limit" "$@" 2>&1 | awk '/compile_step/ || !/Warning|warnings.warn/ { print; fflush() }' | tee -a "$out/$name.txt"
  echo "== $name: rc ${PIPESTATUS[0]}, $((SECONDS - t0))s" | tee -a "$out/$name.txt"
}
gpu_state() { command -v nvidia-smi > /dev/null || return 0; nvidia-smi --query-gpu="$1" --format=csv; }
{ gpu_state name,memory.total,driver_version
  $py -c "import torch, transformers, trl; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__)"
  $py -c "import triton; print('triton', triton.__version__)"; command -v gcc cc; nproc; echo "commit ${COMMIT:-?}"; } 2>&1 | tee "$out/machine.txt"
# 1. Training step of the seed recipe, each variant in a fresh process (bench_engine.py steps): the
#    lean trainer's compiled step with CUDA graphs in TF32 (the path to <= 10 ms: fp32 is bound by the
#    GPU's fp32 matrix multiplies at ~28-31 ms on an H100, 2026-11-27), the same in bf16 autocast (TF32's
#    profile of 2026-11-26 had the GPU busy 10.4 ms a step, so <= 10 ms may need bf16's matrix
#    multiplies; bf16 is within fp32's seed noise on CPU, 8 seeds) and with the compiled update's
#    learning rates on the GPU (`-devlr`: inductor copies a CPU scalar to the GPU with a blocking copy,
#    a suspect for the one host sync a step). lean-fp32-graphs, stock-fp32 (a9ca438's path: 56-59 ms
#    on an H100) and `-eageropt` (the optimizer's update left eager) are variants too.
part steps "${STEPS_LIMIT:-150}" $py benchmarks/bench_engine.py steps --models $models --device $device "${steps[@]}" \
  --variants "${STEP_VARIANTS:-lean-tf32-graphs,lean-bf16-graphs,lean-tf32-graphs-devlr}"
# The pipeline parts below use the compiled step unless it failed above.
compiled=(); grep -Eq "^lean-(fp32|tf32)-graphs .*ms/step" "$out/steps.txt" 2>/dev/null || compiled=(--set train.dpo.compile_step=eager)
# 2. Sample + score: the original loop against the engine, same models, same GPU: fp32 eager, bf16
#    with the decode step compiled as CUDA graphs (sampling.compile_step: auto, the pipeline's setting;
#    the warm-up compiles it, once per batch size), bf16 eager.
part sample "${SAMPLE_LIMIT:-110}" $py benchmarks/bench_engine.py sample --models $models --device $device --n $n --reps 1
# 3. The pipeline end to end at full batch sizes, the four grid models side by side, in TF32 (the seed
#    recipe's arithmetic on CUDA, the only one that can make the table in 10 minutes; PRECISION=fp32
#    for the original's); two
#    evaluation runs per model, so the estimate prices later runs apart from each model's first.
part gpu "${GPU_LIMIT:-170}" $py benchmarks/gpu.py --fraction $fraction --eval-runs 2 --precision "${PRECISION:-tf32}" \
  --side-by-side $side --device $device --models "$base" --workdir "$(mktemp -d)" "${compiled[@]}" "${smaller[@]}"
# 4. fp32 vs TF32 training on the demo models (rewards that mean something): 5 seeds each and fp32's
#    first seed twice, the GPU check of the seed recipe's TF32 default (chosen on CPU with bf16 and 8
#    seeds, and on 2026-11-27's H100 runs with 3). Eleven processes at once, training and
#    sampling uncompiled (the same arithmetic; no eleven compilations of the tiny demo policy at once),
#    2 evaluation runs of 1,000 texts per model (seven such processes took 97-101 s with 3 runs).
part precision "${PRECISION_LIMIT:-130}" $py benchmarks/precision.py --device $device --precisions tf32 --seeds $seeds \
  --replicate --jobs $jobs --preset $preset --workdir "$(mktemp -d)" --set sampling.compile_step=eager \
  --set train.dpo.compile_step=eager --set evaluate.runs=2
# 5. Where the time goes: one evaluation run (sample + score + the KL's log-probs, and the run's
#    metrics, each phase timed: evaluation ran 2,000-2,300 texts/s against sample + score's 3,217 on
#    2026-11-27) and training steps of the TF32 compiled step with the stack of every host sync
#    (2026-11-27's fp32 profile: one cudaStreamSynchronize a step, 2.6 ms of waiting).
#    PROFILE_PARTS=decode,sample,evaluate,train also profiles a decode loop and sample + score alone.
part profile "${PROFILE_LIMIT:-110}" $py benchmarks/profile_gpu.py --batch $batch --texts $n --precision tf32 \
  --device $device --models "$base" --parts "${PROFILE_PARTS:-evaluate,train}"
gpu_state name,utilization.gpu,memory.used | tee -a "$out/machine.txt"
