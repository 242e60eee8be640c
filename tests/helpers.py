"""What the CLI tests share: running the real command, and the names of the tiny preset's models."""

from __future__ import annotations

import os
import subprocess
import sys

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
