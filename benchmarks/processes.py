"""Wall time of a whole run in one process and in several (`--num-processes`), per stage.

Runs `prefalign run PRESET` from an empty run directory (built-in models already cached) once per
variant: one process; N processes with `train.parallel: grid`; N with `data`. The stage times come
from the run's own outputs (samples.meta.json, each train.json, each evaluation run's json), so
they exclude process start-up, which the total includes. On 2 CPU cores expect little gain: the
point of the multi-process path is many GPUs, and here it is measured for correctness and cost.

    python benchmarks/processes.py [--preset tiny] [--processes 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(preset: str, root: Path, processes: int, parallel: str | None) -> dict:
    args = [sys.executable, "-m", "prefalign.cli", "run", preset, "--set", f"run_dir={root}"]
    args += ["--num-processes", str(processes)] if processes > 1 else []
    args += ["--set", f"train.parallel={parallel}"] if parallel else []
    start = time.time()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, env=os.environ.copy())
    total = time.time() - start
    train = [json.loads(p.read_text()) for p in root.glob("models/*/train.json")]
    evals = [json.loads(p.read_text()) for p in root.glob("eval/*/run-*.json")]
    return {
        "total_s": total,
        "sample_s": json.loads((root / "samples.meta.json").read_text())["seconds"],
        "train_model_s": sum(t["train_seconds"] for t in train) / len(train),
        "eval_runs_s": sum(e["seconds"] for e in evals),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    variants = [
        ("1 process", 1, None),
        (f"{args.processes} processes, grid", args.processes, "grid"),
        (f"{args.processes} processes, data", args.processes, "data"),
    ]
    print("| variant | whole run (s) | sample stage (s) | training per model (s) | evaluation runs, summed (s) |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, processes, parallel in variants:
            rows = [
                run(args.preset, Path(tmp) / f"{processes}-{parallel}-{r}", processes, parallel)
                for r in range(args.repeats)
            ]
            cells = [
                " / ".join(f"{row[k]:.1f}" for row in rows)
                for k in ("total_s", "sample_s", "train_model_s", "eval_runs_s")
            ]
            print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
