"""GPU runbook: the original's table-1 grid at full scale (or a stated fraction) on locally built models.

On a machine with a CUDA GPU and no network, this builds GPT-2-small and DistilBERT-base shaped
models with random weights (same cost as `lvwerra/gpt2-imdb` / `lvwerra/distilbert-imdb`), runs
the `imdb` preset's table-1 grid (random pairs x sigmoid/hinge x beta 0.1/1, `seed` recipe, 10k
samples, 20k pairs, 10 runs x 5000), and prints the time of each stage, samples/s, pairs/s and peak
GPU memory, plus a full-scale extrapolation. `--fraction` scales counts, never batch sizes, so the
throughputs are those of a full run: the pair count (training steps at batch 8) and the number of
evaluation runs (each of the full 5,000 samples) scale; the sample stage always draws its full
10,000 texts. Each stage's row prints as soon as the stage ends, with where its time went (the
trainings' one-off and steady costs; the evaluation runs' seconds by phase).

    python benchmarks/gpu.py --fraction 1.0            # the whole table (goal on one H100: <= 10 min)
    python benchmarks/gpu.py --fraction 0.1            # a quick check: 1 evaluation run, 2,000 pairs per model
    python benchmarks/gpu.py --fraction 0.05 --eval-runs 2 --precision tf32 --side-by-side 4   # gpu_check.sh's
    python benchmarks/gpu.py --fraction 0.01 --device cpu --models DIR   # a smoke run of this script anywhere
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import build_base_sized  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fraction", type=float, default=1.0, help="scale of every count (samples, pairs, eval)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "prefalign-gpu"))
    parser.add_argument("--models", default=None, help="dir with policy/ and reward/ (default: build base-sized)")
    parser.add_argument("--precision", default=None, help="train.precision (default: the seed recipe's)")
    parser.add_argument("--side-by-side", type=int, default=1, help="train.side_by_side: grid models trained at once")
    parser.add_argument(
        "--eval-runs",
        type=int,
        default=None,
        help="evaluation runs per model (default: 10 x fraction, at least 1); from 2 on, the estimate "
        "prices the runs after each model's first (which also records its CUDA graphs) by the later ones",
    )
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE, any other config override")
    args = parser.parse_args()

    from prefalign.config.loader import load_config
    from prefalign.models.device import pick_device
    from prefalign.pipeline.logs import quiet_libraries
    from prefalign.pipeline.plan import STAGE_NAMES
    from prefalign.pipeline.runner import run

    quiet_libraries()
    work = Path(args.workdir)
    if args.models:
        policy_dir, reward_dir = str(Path(args.models) / "policy"), str(Path(args.models) / "reward")
        missing = [d for d in (policy_dir, reward_dir) if not (Path(d) / "config.json").is_file()]
        if missing:
            parser.error(
                f"--models {args.models}: no model in {', '.join(missing)} (it needs policy/ and reward/, "
                "each a save_pretrained directory; leave --models out to build base-sized ones)"
            )
    else:
        policy_dir, reward_dir = build_base_sized(work / "models")
    f = args.fraction
    eval_runs = args.eval_runs or max(1, round(10 * f))
    overrides = (
        [
            f"run_dir={work / f'run-{f:g}'}",
            f"device={args.device}",
            f"policy.model={policy_dir}",
            f"reward.model={reward_dir}",
            "pairs.strategies=[random]",
            f"pairs.count={max(1, int(20000 * f))}",
            f"evaluate.runs={eval_runs}",
            f"train.side_by_side={args.side_by_side}",
        ]
        + ([f"train.precision={args.precision}"] if args.precision else [])
        + args.set
    )
    cfg = load_config("imdb", overrides)
    device = pick_device(cfg.device)
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    root = cfg.run_path
    print(
        f"device: {name}; fraction {f:g}; train.precision {cfg.train.precision or 'recipe default'}; "
        f"train.side_by_side {cfg.train.side_by_side}; run dir {root}",
        flush=True,
    )
    print("Each stage's row prints when the stage ends (a run cut short keeps the rows it finished):", flush=True)
    rows, estimates = [], {}
    t_all = time.time()
    for stage in STAGE_NAMES:
        # Each call brings one more stage up to date: the earlier ones are already current.
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.time()
        items = run(cfg, until=stage)
        seconds = round(time.time() - t0, 1)
        # Side-by-side workers are other processes: this process's peak does not cover them.
        measured = cuda and not (stage == "train" and args.side_by_side > 1)
        peak = round(torch.cuda.max_memory_allocated() / 2**30, 2) if measured else None
        estimates[stage], rate, details = full_size(stage, seconds, root, items, f, args.side_by_side)
        rows.append(f"| {stage} | {seconds} | {estimates[stage]:.0f} | {peak} | {rate} |")
        print(f"\nstage {rows[-1]}", *details, sep="\n", flush=True)
    total = time.time() - t_all
    print(
        "\n| stage | seconds | full-scale estimate (s) | peak GPU GiB | throughput |\n|---|---|---|---|---|",
        *rows,
        sep="\n",
    )
    print(
        f"\ntotal {total:.0f}s at fraction {f:g}; full-table estimate {sum(estimates.values()) / 60:.1f} min on {name}"
    )


def phase_line(timing: dict) -> str:
    """A run's (or the sample stage's) seconds by phase, as its json records them."""
    phases = timing.get("phase_seconds", {})
    return f"{timing['seconds']}s for {timing['samples']} texts: " + ", ".join(
        f"{phase} {seconds:.2f}s" for phase, seconds in phases.items()
    )


def full_size(
    stage: str, seconds: float, root: Path, items, f: float, side_by_side: int
) -> tuple[float, str, list[str]]:
    """(the stage's full-size estimate in seconds, its throughput, lines of detail), from the outputs it wrote."""
    if stage == "sample":
        samples = json.loads((root / "samples.meta.json").read_text())
        return seconds, f"{samples['samples_per_second']} samples/s (sample + score)", [phase_line(samples)]
    if stage == "train":
        from prefalign.pipeline.items import DpoModel

        trains = [json.loads((m.path / "train.json").read_text()) for m in items if type(m) is DpoModel]
        # The one-off costs (process start, model load, compilation in the first step) once, the parts
        # that grow with the pair count (Trainer setup with the reference pre-pass, the steps after
        # the first) scaled; models trained side by side overlap.
        at_once = max(1, min(side_by_side, len(trains)))
        rate = {
            id(t): t["steady_pairs_per_second"] or t["pairs_per_second"] for t in trains
        }  # None: a one-step training
        growing = sum(t["setup_seconds"] + t["pairs"] * 3 / rate[id(t)] for t in trains) / at_once
        details = [
            f"  {t['loss']}-beta{t['beta']}: setup {t['setup_seconds']}s, first step {t['first_step_seconds']}s, "
            f"then {rate[id(t)]} pairs/s ({8000 / rate[id(t)]:.1f} ms per step of 8), "
            f"compile_step {t['settings'].get('compile_step')}"
            for t in trains
        ]
        return (
            seconds + growing * (1 / f - 1),
            f"{sum(t['pairs'] * 3 for t in trains) / max(seconds, 1e-9):.0f} pairs/s (3 epochs)",
            details,
        )
    if stage == "evaluate":
        evals = [json.loads(p.read_text()) for p in sorted((root / "eval").glob("*/run-*.json"))]
        eval_samples = sum(r["samples"] for r in evals)
        run_seconds = sum(r["seconds"] for r in evals)  # sample + score + KL of each run, model loading excluded
        # Each model loaded once (the stage's seconds outside its runs), then 10 runs: its first as
        # measured (the first run of a model records its CUDA graphs), the other nine at the mean of
        # its later runs, or of its first if it made only one.
        by_model: dict[str, list[float]] = {}
        for r in evals:
            by_model.setdefault(r["model"], []).append(r["seconds"])
        full_runs = sum(
            runs[0] + 9 * (statistics.mean(runs[1:]) if len(runs) > 1 else runs[0]) for runs in by_model.values()
        )
        with_kl = [r for r in evals if "kl" in r.get("phase_seconds", {})]
        return (
            seconds - run_seconds + full_runs,
            f"{eval_samples / max(seconds, 1e-9):.0f} samples/s over {eval_samples} samples "
            f"({eval_samples / max(run_seconds, 1e-9):.0f} samples/s within the runs, KL included)",
            [f"  run {r['model']}/{r['run']}: " + phase_line(r) for r in with_kl[:4]],
        )
    return seconds, "", []  # pairs, report: the same at any fraction


if __name__ == "__main__":
    main()
