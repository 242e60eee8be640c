"""Shared fixtures: tiny models built locally (no network), in a cache private to the test session."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests must never reach for the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Everything a test writes goes under one temporary folder, removed when the session ends: prefalign's
# model cache (`PREFALIGN_CACHE`; a build without a root would otherwise fill ~/.cache/prefalign), and
# what libraries keep under $HOME (transformers' copies of a checkpoint's own code, matplotlib's font
# list, chromium's profile, hypothesis' examples). Set here, when pytest loads this file: transformers
# and huggingface_hub read HF_HOME once, when the test modules import them, before any fixture runs.
# CLI subprocesses inherit the same environment.
PRIVATE = Path(tempfile.mkdtemp(prefix="prefalign-tests-"))
os.environ.update(
    {
        "HOME": str(PRIVATE / "home"),
        "XDG_CACHE_HOME": str(PRIVATE / "home" / ".cache"),
        "XDG_CONFIG_HOME": str(PRIVATE / "home" / ".config"),
        "HF_HOME": str(PRIVATE / "home" / ".cache" / "huggingface"),
        "MPLCONFIGDIR": str(PRIVATE / "home" / ".config" / "matplotlib"),
        "PREFALIGN_CACHE": str(PRIVATE / "prefalign-cache"),
        "HYPOTHESIS_STORAGE_DIRECTORY": str(PRIVATE / "hypothesis"),
    }
)
os.environ.pop("HF_MODULES_CACHE", None)  # under HF_HOME


def pytest_configure(config):
    """`kill PID` of pytest (SIGTERM: a CI's time limit) interrupts it as Ctrl-C does, so that it
    ends as below, not at once."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_unconfigure(config):
    """At the end, interrupted too: no process a test started still runs (helpers.start), and the
    session's folder is gone."""
    from helpers import stop_all

    stop_all()
    shutil.rmtree(PRIVATE, ignore_errors=True)


# What makes a test slow (`make test-fast` leaves it out: pytest -m "not slow"): the tiny models (a
# test given them waits for their build, tens of seconds on 2 cores, then loads, samples or trains
# them), or a mark of its own or its module's `pytestmark = pytest.mark.slow` (the CLI end to end, a
# model built or loaded without the fixture).
BUILT_MODELS = "tiny_dir"  # tiny_run, tiny_policy and tiny_classifier depend on it


def pytest_collection_modifyitems(config, items):
    for item in items:
        if BUILT_MODELS in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def cache_root():
    """The session's PREFALIGN_CACHE (set above, so CLI subprocesses see it too)."""
    return Path(os.environ["PREFALIGN_CACHE"])


@pytest.fixture(scope="session")
def tiny_dir(cache_root):
    """Directory with `policy/` (GPT-2, 2 layers) and `reward/` (DistilBERT, NEGATIVE/POSITIVE)."""
    from prefalign.models.builtin import build
    from prefalign.models.specs import SPECS

    return build(SPECS["tiny"], cache_root, log=lambda msg: None)


@pytest.fixture
def cli(capsys):
    """`prefalign ARGS` run in this process, as `helpers.prefalign` runs it in a new one but without
    the interpreter's start-up (seconds per call): returns (returncode, stdout, stderr)."""
    import subprocess

    from prefalign.cli import main

    def call(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        if check:
            assert code == 0, out[-3000:] + err[-3000:]
        return subprocess.CompletedProcess(args, code, out, err)

    return call


@pytest.fixture(scope="session")
def tiny_run(tiny_dir, tmp_path_factory):
    """(run directory, process) of `prefalign run tiny` in one process: what other runs compare with."""
    from helpers import prefalign

    root = tmp_path_factory.mktemp("smoke") / "run"
    return root, prefalign("run", "tiny", "--set", f"run_dir={root}")


@pytest.fixture(scope="session")
def tiny_policy(tiny_dir):
    import torch

    from prefalign.models.loading import load_policy

    return load_policy(str(tiny_dir / "policy"), None, torch.device("cpu"))


@pytest.fixture(scope="session")
def tiny_classifier(tiny_dir):
    import torch

    from prefalign.models.loading import load_classifier

    return load_classifier(str(tiny_dir / "reward"), None, torch.device("cpu"))


@pytest.fixture
def scored_samples():
    rng = np.random.default_rng(0)
    return pd.DataFrame({"text": [f"text {i}" for i in range(300)], "reward": rng.normal(0.5, 1.5, 300)})


def pytest_terminal_summary(terminalreporter, config):
    """The order's seed, printed even under -q (pytest-randomly shuffles the tests; its header line is
    hidden then), so a failure that depends on the order can be replayed."""
    seed = getattr(config.option, "randomly_seed", None)
    if isinstance(seed, int):
        terminalreporter.write_line(f"random test order, seed {seed}: replay with -p randomly --randomly-seed={seed}")
