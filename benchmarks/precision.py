"""Does faster arithmetic (bf16 autocast, TF32) change the results more than another training seed does?

Trains the original's four models (random pairs x sigmoid / hinge x beta 0.1 / 1, `seed` recipe,
one epoch as in the demo) on the demo models with each training seed of `--seeds` in fp32 and in
each other precision named (bf16 autocast with fp32 master weights; TF32 matrix multiplies, CUDA
only); each run directory evaluates its models (3 runs x 1,000 samples, the same evaluation seeds
everywhere). `--replicate` also trains fp32 with the first seed a second time: on a GPU the same
seed need not give the same weights (atomic adds in some backward kernels), and training at lr 5e-3
amplifies any difference. For each model and metric it prints every run's mean; then, over the
models, how far two fp32 seeds lie apart next to how far each other precision lies from fp32 (at the
same seed, and over every pair of runs), and a verdict per metric: a precision is `within` fp32's
seed-to-seed noise unless its runs lie farther from fp32's than fp32's lie from each other by more
than chance explains (a permutation test, p < 0.05: `excess_p_value`). The rule for a recipe's
default on CUDA: `within` on reward, diversity and KL, with at least STRONG_SEEDS seeds. Runs on CPU
(bf16 autocast works there) or a GPU, `--jobs` variants at once; `--from-log` reads the per-run lines
of an earlier run's output instead of training:

    python benchmarks/precision.py [--device cpu] [--precisions bf16] [--jobs 1] [--workdir DIR]
    python benchmarks/precision.py --device cuda --precisions tf32 --seeds 0,1,2 --replicate --jobs 7
    python benchmarks/precision.py --from-log benchmarks/gpu-runs/2026-11-27-h100-7e2fb62/precision.txt
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

METRICS = ["reward_mean", "diversity", "kl_seq"]
# Below this many seeds the permutation test rarely finds a real shift (with 2 seeds per precision
# each model's runs split between them in only 6 ways).
STRONG_SEEDS = 5


EVIDENCE_OFF = (
    "--set=baselines.best_of_n=[]",
    "--set=evaluate.judges=[]",
    "--set=evaluate.fluency=null",
    "--set=evaluate.during_training=null",
)


def run_variant(
    workdir: Path,
    name: str,
    precision: str,
    seed: int,
    device: str,
    preset: str = "demo",
    threads: int | None = None,
    extra: tuple[str, ...] = (),
) -> pd.DataFrame:
    run_dir = workdir / name
    args = [
        "run",
        preset,
        "--set",
        f"run_dir={run_dir}",
        "--set",
        f"device={device}",
        "--set",
        "pairs.strategies=[random]",
        "--set",
        f"train.precision={precision}",
        "--set",
        f"train.seed={seed}",
        # The evidence settings (best-of-N, judges, fluency, training curves) measure nothing this compares.
        *EVIDENCE_OFF,
        *(f"--set={s}" for s in extra),
    ]
    start = time.time()
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    subprocess.run([sys.executable, "-m", "prefalign.cli", *args], check=True, stdout=subprocess.DEVNULL, env=env)
    results = pd.read_csv(run_dir / "results.csv")
    means = results[results.method != "original"].groupby("model", sort=False)[METRICS].mean()
    # Printed as soon as the variant is done, so that `--from-log` can analyse a run cut short.
    lines = [f"{model} {metric}: {name} {means.loc[model, metric]:.6f}" for model in means.index for metric in METRICS]
    print("\n".join([f"{name}: {time.time() - start:.0f}s", *lines]), flush=True)
    return means


def gaps(values: dict, seeds: list[int], others: list[str], replicate: bool) -> dict[tuple[str, str], list[float]]:
    """(row, metric) -> one mean |difference| per model, from `values`: (model, metric) -> run name ->
    the run's mean. Rows: fp32 seed to seed (every pair of distinct seeds), the same seed trained
    twice (with `replicate`), and each other precision against fp32 at the same seed and over every
    pair of runs (`any seeds`, what the verdict tests: where one seed does not repeat itself, as on
    a GPU, pairing runs by seed means nothing)."""
    rows: dict = {}
    for (_model, metric), v in values.items():
        fp32 = [v[f"fp32-seed{s}"] for s in seeds]
        if len(seeds) > 1:
            rows.setdefault(("fp32 seed to seed", metric), []).append(_spread(fp32))
        if replicate:
            rows.setdefault(("fp32 same seed again", metric), []).append(abs(v[f"fp32-seed{seeds[0]}-again"] - fp32[0]))
        for other in others:
            low = [v[f"{other}-seed{s}"] for s in seeds]
            rows.setdefault((f"{other} vs fp32, same seed", metric), []).append(
                statistics.mean(abs(x - y) for x, y in zip(low, fp32))
            )
            rows.setdefault((f"{other} vs fp32, any seeds", metric), []).append(_distance(low, fp32))
    return rows


def _spread(runs: list[float]) -> float:
    """Mean |difference| between two runs of one precision (every pair of distinct runs)."""
    return statistics.mean(abs(x - y) for x, y in itertools.combinations(runs, 2))


def _distance(low: list[float], fp32: list[float]) -> float:
    """Mean |difference| between a run of one precision and a run of the other (every pair)."""
    return statistics.mean(abs(x - y) for x in low for y in fp32)


def excess_p_value(
    values: dict, seeds: list[int], other: str, metric: str, permutations: int = 20000, seed: int = 0
) -> tuple[float, float]:
    """(excess, p) for one metric. excess: the mean over models of how much farther `other`'s runs lie
    from fp32's (_distance) than fp32's runs lie from each other (_spread). p: the chance of an
    excess at least that large if the precision made no difference, i.e. if the labels of the two
    runs of each seed were exchanged at random (a paired permutation test with `permutations` random
    deals; pairing by seed keeps it valid where runs of one seed resemble each other, as on CPU)."""
    n = len(seeds)

    def excesses(low: np.ndarray, fp32: np.ndarray) -> np.ndarray:  # (deals, n) each -> (deals,)
        distance = np.abs(low[:, :, None] - fp32[:, None, :]).mean((1, 2))  # _distance
        spread = np.abs(fp32[:, :, None] - fp32[:, None, :]).sum((1, 2)) / (n * (n - 1))  # _spread (diagonal: zeros)
        return distance - spread

    rng = np.random.default_rng(seed)
    observed, shuffled = [], []  # per model: the excess, and the excess of every deal
    for (_, m), v in values.items():
        if m != metric:
            continue
        low, fp32 = (np.array([v[f"{name}-seed{s}"] for s in seeds]) for name in (other, "fp32"))
        observed.append(float(excesses(low[None], fp32[None])[0]))
        swap = rng.random((permutations, n)) < 0.5  # per deal and seed: the two runs' labels exchanged
        shuffled.append(excesses(np.where(swap, fp32, low), np.where(swap, low, fp32)))
    excess, deals = statistics.mean(observed), np.mean(shuffled, axis=0)  # means over the models
    return excess, float((1 + np.sum(deals >= excess - 1e-9)) / (1 + permutations))


def report(values: dict, seeds: list[int], others: list[str], replicate: bool, level: float = 0.05) -> str:
    """The table of mean gaps over the models, and each precision's verdict: `within` fp32's seed noise
    on a metric unless its excess (excess_p_value) is too large to be chance (p < `level`)."""
    rows = gaps(values, seeds, others, replicate)
    n_models = len({model for model, _ in values})
    lines = [
        f"mean |difference| over the {n_models} models (seeds {seeds}):",
        f"| compared | {' | '.join(METRICS)} |",
        f"|---|{'---|' * len(METRICS)}",
    ]
    for what in dict.fromkeys(what for what, _ in rows):
        lines.append(f"| {what} | " + " | ".join(f"{statistics.mean(rows[(what, m)]):.3f}" for m in METRICS) + " |")
    for other in others:
        if len(seeds) < 2:
            lines.append(f"{other}: one seed, no seed-to-seed difference to compare with")
            continue
        verdicts = []
        for metric in METRICS:
            excess, p = excess_p_value(values, seeds, other, metric)
            shown = f"excess {excess:+.3f}, p = {p:.3f}"
            verdicts.append((p >= level, f"{metric} {'within' if p >= level else 'OUTSIDE'} ({shown})"))
        weak = f"; fewer than {STRONG_SEEDS} seeds, a weak test" if len(seeds) < STRONG_SEEDS else ""
        lines.append(
            f"{other}: {'within' if all(ok for ok, _ in verdicts) else 'OUTSIDE'} fp32 seed-to-seed noise "
            f"({', '.join(text for _, text in verdicts)}{weak})"
        )
    return "\n".join(lines)


def read_log(path: Path) -> dict:
    """`values` (see gaps) from the lines `MODEL METRIC: RUN VALUE, RUN VALUE, ...` that main prints
    (each variant's as it finishes, all of them at the end)."""
    values = {}
    for line in path.read_text().splitlines():
        head, _, runs = line.partition(": ")
        model, _, metric = head.rpartition(" ")
        if metric in METRICS and model and runs:
            values.setdefault((model, metric), {}).update(
                (name, float(value)) for name, value in (run.rsplit(" ", 1) for run in runs.split(", "))
            )
    if not values:
        raise SystemExit(f"{path}: no lines 'MODEL METRIC: RUN VALUE, ...' (precision.py's output) found")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", default="bf16", help="comma-separated precisions to compare with fp32")
    parser.add_argument("--jobs", type=int, default=1, help="variants run at once (separate processes)")
    parser.add_argument(
        "--preset", default="demo", help="the config the variants run (the demo: rewards that mean something)"
    )
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "prefalign-precision"))
    parser.add_argument("--seeds", default="0,1", help="comma-separated training seeds, each run in every precision")
    parser.add_argument("--replicate", action="store_true", help="also train fp32 with the first seed a second time")
    parser.add_argument(
        "--set", action="append", default=[], help="KEY=VALUE for every run (e.g. train.dpo.compile_step=eager)"
    )
    parser.add_argument(
        "--from-log", type=Path, help="an earlier run's output: analyse its per-run lines, train nothing"
    )
    args = parser.parse_args()
    if args.from_log:
        values = read_log(args.from_log)
        names = set.intersection(*(set(v) for v in values.values()))  # the variants that finished
        others = list(dict.fromkeys(name.split("-seed")[0] for name in sorted(names) if not name.startswith("fp32-")))
        # The seeds every precision finished (a run cut by a time limit may lack some).
        seeds = sorted(
            int(name.split("seed")[1])
            for name in names
            if name.startswith("fp32-")
            and "again" not in name
            and all(f"{other}-{name[5:]}" in names for other in others)
        )
        replicate = f"fp32-seed{seeds[0]}-again" in names if seeds else False
        print(report(values, seeds, others, replicate))
        return
    others = args.precisions.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = {f"{precision}-seed{seed}": (precision, seed) for precision in ["fp32", *others] for seed in seeds}
    if args.replicate:
        variants[f"fp32-seed{seeds[0]}-again"] = ("fp32", seeds[0])
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None
        futures = {
            name: pool.submit(
                run_variant, Path(args.workdir), name, *setting, args.device, args.preset, threads, tuple(args.set)
            )
            for name, setting in variants.items()
        }
        means = {name: future.result() for name, future in futures.items()}

    models = list(means[f"fp32-seed{seeds[0]}"].index)
    values = {
        (model, metric): {name: float(frame.loc[model, metric]) for name, frame in means.items()}
        for model in models
        for metric in METRICS
    }
    for (model, metric), v in values.items():
        print(f"{model} {metric}: " + ", ".join(f"{name} {value:.3f}" for name, value in v.items()))
    print(report(values, seeds, others, args.replicate))


if __name__ == "__main__":
    main()
