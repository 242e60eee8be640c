#!/usr/bin/env bash
# Time `prefalign run demo` end to end, twice, each under GNU time (`/usr/bin/time -v`):
#   cold: an empty model cache (PREFALIGN_CACHE in a fresh temp dir), so the demo models are built first;
#   warm: the same cache, a fresh run directory, so only the experiment itself runs.
# Prints wall time and peak RSS (GNU time's "Maximum resident set size": the largest single process,
# which here is prefalign itself) for each. Budget for the demo on 2 cores: cold <= 15 min,
# warm <= 8 min, peak RSS <= 4 GB.
#
#   benchmarks/demo_time.sh                          # both runs
#   benchmarks/demo_time.sh --set evaluate.runs=1    # extra arguments go to `prefalign run demo`
#
# Needs GNU time at /usr/bin/time (Debian/Ubuntu: `apt-get install -y time`; the shell's `time`
# keyword does not report memory). Everything is written under a temp dir that is kept and printed.
# Timings assume an otherwise idle machine: another CPU-heavy process slows torch's threads far more
# than its share of the cores, so the script warns when the load average says the machine is busy.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PREFALIGN=${PREFALIGN:-$ROOT/.venv/bin/prefalign}
[ -x /usr/bin/time ] || { echo "demo_time.sh: /usr/bin/time not found; install GNU time (apt-get install -y time)" >&2; exit 1; }
[ -x "$PREFALIGN" ] || { echo "demo_time.sh: $PREFALIGN not found; run 'make install' first" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/prefalign-demo-time.XXXXXX")
export PREFALIGN_CACHE="$WORK/cache"
export TOKENIZERS_PARALLELISM=false
# CPU use over 2 s from /proc/stat (the load average would still count processes that just ended).
cpu_busy() {
    local a b
    a=$(head -n1 /proc/stat); sleep 2; b=$(head -n1 /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN { n = split(a, x); split(b, y); t = 0
        for (i = 2; i <= n; i++) t += y[i] - x[i]
        idle = (y[5] - x[5]) + (y[6] - x[6]); printf "%.0f", (t > 0 ? 100 * (t - idle) / t : 0) }'
}
busy=$(cpu_busy)
echo "work dir: $WORK ($(nproc) CPUs, ${busy}% busy before starting)"
if [ "$busy" -gt 25 ]; then
    echo "warning: the CPUs are ${busy}% busy with other work; timings will be slower than on an idle machine" >&2
fi

summary=()
run_once() {
    local label=$1
    shift
    local dir="$WORK/$label"
    mkdir -p "$dir"
    echo "== $label: prefalign run demo (log: $dir/log.txt)"
    local rc=0
    # Run from the fresh directory: the run dir is runs/demo relative to the cwd.
    (cd "$dir" && /usr/bin/time -v -o "$dir/time.txt" "$PREFALIGN" run demo "$@" >"$dir/log.txt" 2>&1) || rc=$?
    local wall rss_kb
    wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$dir/time.txt")
    rss_kb=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$dir/time.txt")
    local line
    line=$(printf '%-5s wall %8s   peak RSS %6.0f MB   exit %s' "$label" "$wall" "$(awk -v k="$rss_kb" 'BEGIN{print k / 1024}')" "$rc")
    echo "$line"
    summary+=("$line")
    if [ "$rc" -ne 0 ]; then
        tail -n 20 "$dir/log.txt" >&2
        return "$rc"
    fi
}

run_once cold "$@"
run_once warm "$@"
echo
echo "== summary"
printf '%s\n' "${summary[@]}"
echo "report: $WORK/warm/runs/demo/report.md"
