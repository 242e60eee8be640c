"""Does faster arithmetic (bf16 autocast, TF32) change the results more than another training seed does?

Trains the original's four models (random pairs x sigmoid / hinge x beta 0.1 / 1, `seed` recipe,
one epoch as in the demo) on the demo models with training seeds 0 and 1 in fp32 and in each other
precision named (bf16 autocast with fp32 master weights; TF32 matrix multiplies, CUDA only); each
run directory evaluates its models (3 runs x 1,000 samples, the same evaluation seeds everywhere).
For each model and metric it prints the fp32 seed-to-seed gap next to each precision's gap from
fp32 at equal seed. A precision may be a recipe's default on CUDA only if the second is no larger
than the first. Runs on CPU (bf16 autocast works there, slowly) or a GPU, `--jobs` variants at once:

    python benchmarks/precision.py [--device cpu] [--precisions bf16] [--jobs 1] [--workdir DIR]
    python benchmarks/precision.py --device cuda --precisions tf32,bf16 --jobs 6
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

METRICS = ["reward_mean", "diversity", "kl_seq"]


def run_variant(workdir: Path, name: str, precision: str, seed: int, device: str, preset: str = "demo",
                threads: int | None = None) -> pd.DataFrame:  # fmt: skip
    run_dir = workdir / name
    args = ["run", preset, "--set", f"run_dir={run_dir}", "--set", f"device={device}", "--set", "pairs.strategies=[random]",
            "--set", f"train.precision={precision}", "--set", f"train.seed={seed}"]  # fmt: skip
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
    args = parser.parse_args()
    others = args.precisions.split(",")
    variants = {f"{precision}-seed{seed}": (precision, seed) for precision in ["fp32", *others] for seed in (0, 1)}
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None
        futures = {name: pool.submit(run_variant, Path(args.workdir), name, *setting, args.device, args.preset, threads)
                   for name, setting in variants.items()}  # fmt: skip
        means = {name: future.result() for name, future in futures.items()}

    for other in others:
        print(f"\n| model | metric | fp32 s0 | fp32 s1 | {other} s0 | {other} s1 | seed gap (fp32) | {other} gap s0 | "
              f"{other} gap s1 |\n|---|---|---|---|---|---|---|---|---|")  # fmt: skip
        worst = {}  # metric -> per model (fp32 seed gap, mean and max of the same-seed gaps)
        for model in means["fp32-seed0"].index:
            for metric in METRICS:
                v = {name: float(frame.loc[model, metric]) for name, frame in means.items()}
                seed_gap = abs(v["fp32-seed1"] - v["fp32-seed0"])
                gaps = abs(v[f"{other}-seed0"] - v["fp32-seed0"]), abs(v[f"{other}-seed1"] - v["fp32-seed1"])
                worst.setdefault(metric, []).append((seed_gap, sum(gaps) / 2, max(gaps)))
                print(f"| {model} | {metric} | {v['fp32-seed0']:.3f} | {v['fp32-seed1']:.3f} | {v[f'{other}-seed0']:.3f} | "
                      f"{v[f'{other}-seed1']:.3f} | {seed_gap:.3f} | {gaps[0]:.3f} | {gaps[1]:.3f} |")  # fmt: skip
        print(f"\nmean over models: | metric | fp32 seed-to-seed gap | {other}-vs-fp32 gap, mean of the two seeds | "
              "... the larger |")  # fmt: skip
        for metric, gaps in worst.items():
            seed_gap, mean_gap, max_gap = (sum(g[i] for g in gaps) / len(gaps) for i in range(3))
            verdict = "within" if mean_gap <= seed_gap else "OUTSIDE"
            print(f"| {metric} | {seed_gap:.3f} | {mean_gap:.3f} | {max_gap:.3f} | {verdict} seed noise |")


if __name__ == "__main__":
    main()
