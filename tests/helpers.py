"""What the CLI tests share: running the real command, and the names of the tiny preset's models."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

STRATEGIES = ["random", "margin", "threshold"]
MODELS = [f"{s}-{loss}-beta0.1-default" for s in STRATEGIES for loss in ("sigmoid", "hinge")]


def prefalign(*args, cwd=None, check=True, env=None) -> subprocess.CompletedProcess:
    """`python -m prefalign.cli ARGS` in a subprocess; with `check`, its exit code must be 0."""
    proc = subprocess.run(
        [sys.executable, "-m", "prefalign.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def kill_after_a_checkpoint(args: list[str], checkpoints: Path) -> None:
    """Start `python -m prefalign.cli ARGS` and SIGKILL its process group once a trainer checkpoint
    is complete under `checkpoints` (the model's `.NAME.checkpoints` folder)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefalign.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while not list(checkpoints.glob("checkpoint-*/trainer_state.json")) and time.time() < deadline:
        assert proc.poll() is None, "training finished before a checkpoint was seen"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
