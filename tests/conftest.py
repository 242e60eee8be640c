"""Shared fixtures: tiny models built locally (no network), in a cache private to the test session."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests must never reach for the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory):
    """A fresh PREFALIGN_CACHE for the whole session, also seen by CLI subprocesses."""
    root = tmp_path_factory.mktemp("prefalign-cache")
    old = os.environ.get("PREFALIGN_CACHE")
    os.environ["PREFALIGN_CACHE"] = str(root)
    yield root
    if old is None:
        os.environ.pop("PREFALIGN_CACHE", None)
    else:
        os.environ["PREFALIGN_CACHE"] = old


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
