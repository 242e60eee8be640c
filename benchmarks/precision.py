"""Does faster arithmetic (bf16 autocast, TF32) change the results more than another training seed does?

Trains the original's four models (random pairs x sigmoid / hinge x beta 0.1 / 1, `seed` recipe,
one epoch as in the demo) on the demo models with each training seed of `--seeds` in fp32 and in
each other precision named (bf16 autocast with fp32 master weights; TF32 matrix multiplies, CUDA
only); each run directory evaluates its models (3 runs x 1,000 samples, the same evaluation seeds
everywhere). `--replicate` also trains fp32 with the first seed a second time: on a GPU the same
seed need not give the same weights (atomic adds in some backward kernels), and training at lr 5e-3
amplifies any difference. For each model and metric it prints the mean fp32 seed-to-seed gap next
to each precision's mean gap from fp32 at equal seed. A precision may be a recipe's default on
CUDA only if the second is no larger than the first. With several seeds it also prints how far
each precision's mean over the seeds is from fp32's, next to the standard error of fp32's mean (a
shift common to all seeds would stand out against it). Runs on CPU (bf16 autocast works there,
slowly) or a GPU, `--jobs` variants at once:

    python benchmarks/precision.py [--device cpu] [--precisions bf16] [--jobs 1] [--workdir DIR]
    python benchmarks/precision.py --device cuda --precisions tf32 --seeds 0,1,2 --replicate --jobs 7
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

import pandas as pd

METRICS = ["reward_mean", "diversity", "kl_seq"]


def run_variant(workdir: Path, name: str, precision: str, seed: int, device: str, preset: str = "demo",
                threads: int | None = None, extra: tuple[str, ...] = ()) -> pd.DataFrame:  # fmt: skip
    run_dir = workdir / name
    args = ["run", preset, "--set", f"run_dir={run_dir}", "--set", f"device={device}", "--set", "pairs.strategies=[random]",
            "--set", f"train.precision={precision}", "--set", f"train.seed={seed}", *(f"--set={s}" for s in extra)]  # fmt: skip
    start = time.time()
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    subprocess.run([sys.executable, "-m", "prefalign.cli", *args], check=True, stdout=subprocess.DEVNULL, env=env)
    print(f"{name}: {time.time() - start:.0f}s", flush=True)
    results = pd.read_csv(run_dir / "results.csv")
    return results[results.method != "original"].groupby("model", sort=False)[METRICS].mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", default="bf16", help="comma-separated precisions to compare with fp32")
    parser.add_argument("--jobs", type=int, default=1, help="variants run at once (separate processes)")
    parser.add_argument("--preset", default="demo", help="the config the variants run (the demo: rewards that mean something)")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "prefalign-precision"))
    parser.add_argument("--seeds", default="0,1", help="comma-separated training seeds, each run in every precision")
    parser.add_argument("--replicate", action="store_true", help="also train fp32 with the first seed a second time")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE for every run (e.g. train.dpo.compile_step=eager)")
    args = parser.parse_args()
    others = args.precisions.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = {f"{precision}-seed{seed}": (precision, seed) for precision in ["fp32", *others] for seed in seeds}
    if args.replicate:
        variants[f"fp32-seed{seeds[0]}-again"] = ("fp32", seeds[0])
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None
        futures = {name: pool.submit(run_variant, Path(args.workdir), name, *setting, args.device, args.preset, threads,
                                     tuple(args.set)) for name, setting in variants.items()}  # fmt: skip
        means = {name: future.result() for name, future in futures.items()}

    pairs = list(itertools.combinations(seeds, 2))
    gaps = {}  # (what, metric) -> per model: mean |difference|
    for model in means[f"fp32-seed{seeds[0]}"].index:
        for metric in METRICS:
            v = {name: float(frame.loc[model, metric]) for name, frame in means.items()}
            gaps.setdefault(("fp32 seed to seed", metric), []).append(
                sum(abs(v[f"fp32-seed{a}"] - v[f"fp32-seed{b}"]) for a, b in pairs) / max(1, len(pairs)))
            if args.replicate:
                gaps.setdefault(("fp32 same seed again", metric), []).append(
                    abs(v[f"fp32-seed{seeds[0]}-again"] - v[f"fp32-seed{seeds[0]}"]))
            for other in others:
                gaps.setdefault((f"{other} vs fp32, same seed", metric), []).append(
                    sum(abs(v[f"{other}-seed{s}"] - v[f"fp32-seed{s}"]) for s in seeds) / len(seeds))
            if len(seeds) > 1:
                # A shift common to every seed, against what seeds alone make of a mean over len(seeds):
                fp32 = [v[f"fp32-seed{s}"] for s in seeds]
                gaps.setdefault(("fp32 mean over seeds: standard error", metric), []).append(
                    statistics.stdev(fp32) / len(seeds) ** 0.5)
                for other in others:
                    gaps.setdefault((f"{other} vs fp32, means over seeds", metric), []).append(
                        abs(statistics.mean(v[f"{other}-seed{s}"] for s in seeds) - statistics.mean(fp32)))
            print(f"{model} {metric}: " + ", ".join(f"{name} {value:.3f}" for name, value in v.items()))
    whats = list(dict.fromkeys(what for what, _ in gaps))
    print(f"\nmean |difference| over the {len(means[f'fp32-seed{seeds[0]}'].index)} models (seeds {seeds}):\n"
          f"| compared | {' | '.join(METRICS)} |\n|---|{'---|' * len(METRICS)}")
    for what in whats:
        print(f"| {what} | " + " | ".join(f"{sum(gaps[(what, m)]) / len(gaps[(what, m)]):.3f}" for m in METRICS) + " |")
    for other in others:
        inside = [sum(gaps[(f"{other} vs fp32, same seed", m)]) <= sum(gaps[("fp32 seed to seed", m)]) for m in METRICS]
        verdicts = ", ".join(f"{m} {'within' if ok else 'outside'}" for m, ok in zip(METRICS, inside))
        print(f"{other}: {'within' if all(inside) else 'OUTSIDE'} fp32 seed-to-seed noise ({verdicts})")


if __name__ == "__main__":
    main()
