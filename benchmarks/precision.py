"""Does bf16 autocast training change the results more than another training seed does?

Trains the original's four models (random pairs x sigmoid / hinge x beta 0.1 / 1, `seed` recipe,
one epoch as in the demo) on the demo models four times: fp32 with training seeds 0 and 1, and
bf16 autocast (fp32 master weights) with the same two seeds; each run directory evaluates its models
(3 runs x 1,000 samples, the same evaluation seeds everywhere). For each model and metric it prints
the fp32 seed-to-seed gap next to the bf16-vs-fp32 gap at equal seed. `train.precision: auto` turns
bf16 on for CUDA only if the second is no larger than the first. Runs on CPU (bf16 autocast works
there, slowly) or a GPU:

    python benchmarks/precision.py [--device cpu] [--workdir /tmp/prefalign-precision]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

METRICS = ["reward_mean", "diversity", "kl_seq"]
VARIANTS = {f"{precision}-seed{seed}": (precision, seed) for precision in ("fp32", "bf16") for seed in (0, 1)}


def run_variant(workdir: Path, name: str, precision: str, seed: int, device: str) -> pd.DataFrame:
    run_dir = workdir / name
    args = ["run", "demo", "--set", f"run_dir={run_dir}", "--set", f"device={device}", "--set", "pairs.strategies=[random]",
            "--set", f"train.precision={precision}", "--set", f"train.seed={seed}"]  # fmt: skip
    start = time.time()
    subprocess.run([sys.executable, "-m", "prefalign.cli", *args], check=True, stdout=subprocess.DEVNULL)
    print(f"{name}: {time.time() - start:.0f}s", flush=True)
    results = pd.read_csv(run_dir / "results.csv")
    return results[results.method != "original"].groupby("model", sort=False)[METRICS].mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "prefalign-precision"))
    args = parser.parse_args()
    means = {name: run_variant(Path(args.workdir), name, *setting, args.device) for name, setting in VARIANTS.items()}

    print("\n| model | metric | fp32 s0 | fp32 s1 | bf16 s0 | bf16 s1 | seed gap (fp32) | bf16 gap s0 | bf16 gap s1 |")
    print("|---|---|---|---|---|---|---|---|---|")
    worst = {}  # metric -> per model (fp32 seed gap, mean and max of the bf16 same-seed gaps)
    for model in means["fp32-seed0"].index:
        for metric in METRICS:
            v = {name: float(frame.loc[model, metric]) for name, frame in means.items()}
            seed_gap = abs(v["fp32-seed1"] - v["fp32-seed0"])
            gaps = abs(v["bf16-seed0"] - v["fp32-seed0"]), abs(v["bf16-seed1"] - v["fp32-seed1"])
            worst.setdefault(metric, []).append((seed_gap, sum(gaps) / 2, max(gaps)))
            print(f"| {model} | {metric} | {v['fp32-seed0']:.3f} | {v['fp32-seed1']:.3f} | {v['bf16-seed0']:.3f} | "
                  f"{v['bf16-seed1']:.3f} | {seed_gap:.3f} | {gaps[0]:.3f} | {gaps[1]:.3f} |")  # fmt: skip
    print("\nmean over models: | metric | fp32 seed-to-seed gap | bf16-vs-fp32 gap, mean of the two seeds | ... the larger |")
    for metric, gaps in worst.items():
        seed_gap, mean_gap, max_gap = (sum(g[i] for g in gaps) / len(gaps) for i in range(3))
        print(f"| {metric} | {seed_gap:.3f} | {mean_gap:.3f} | {max_gap:.3f} |")


if __name__ == "__main__":
    main()
