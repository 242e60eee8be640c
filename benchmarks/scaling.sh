#!/usr/bin/env bash
# Wall time and peak RSS of the sample stage (sample + score) for N = 1k, 5k, 20k on the demo models.
# Time should grow linearly in N; memory should not (texts are streamed to Parquet in chunks).
#   benchmarks/scaling.sh [N ...]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PREFALIGN=${PREFALIGN:-$ROOT/.venv/bin/prefalign}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/prefalign-scaling.XXXXXX")
"$PREFALIGN" build-demo demo >/dev/null
printf "| N | process wall (s) | stage samples/s | peak RSS (MB) |\n|---|---|---|---|\n"
for n in "${@:-1000 5000 20000}"; do
    for n1 in $n; do
        /usr/bin/time -f "%e %M" -o "$WORK/time-$n1" "$PREFALIGN" sample demo --set "run_dir=$WORK/run-$n1" \
            --set "sampling.num_samples=$n1" >"$WORK/log-$n1" 2>&1
        read -r wall rss <"$WORK/time-$n1"
        # The stage's own rate (samples.meta.json) excludes start-up and model loading.
        sps=$(python3 -c "import json; print(json.load(open('$WORK/run-$n1/samples.meta.json'))['samples_per_second'])")
        awk -v n="$n1" -v w="$wall" -v s="$sps" -v r="$rss" 'BEGIN {printf "| %d | %.1f | %.0f | %.0f |\n", n, w, s, r / 1024}'
    done
done
