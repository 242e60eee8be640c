"""The real CLI on the `tiny` preset, as a user runs it: every output, caching, resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

STRATEGIES = ["random", "margin", "threshold"]
MODELS = [f"{s}-{loss}-beta0.1-default" for s in STRATEGIES for loss in ("sigmoid", "hinge")]


def prefalign(*args, cwd=None, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "prefalign.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=os.environ.copy(), timeout=600)  # fmt: skip
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def tiny_run(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke") / "run"
    t0 = time.time()
    proc = prefalign("run", "tiny", "--set", f"run_dir={root}")
    print(f"prefalign run tiny: {time.time() - t0:.1f}s")
    return root, proc


def test_run_tiny_writes_every_output(tiny_run):
    root, _ = tiny_run
    samples = pd.read_parquet(root / "samples.parquet")
    assert len(samples) == 400
    assert {"text", "reward", "positive_prob", "n_tokens"} <= set(samples.columns)
    for s in STRATEGIES:
        pairs = pd.read_parquet(root / "pairs" / f"{s}.parquet")
        assert len(pairs) == 200
        assert {"prompt", "chosen", "rejected", "chosen_reward", "rejected_reward"} <= set(pairs.columns)
        assert (pairs.chosen_reward > pairs.rejected_reward).all()
        assert (pairs.prompt == "<|endoftext|>").all()
    for m in MODELS:
        d = root / "models" / m
        assert (d / "model.safetensors").exists() and (d / "config.json").exists() and (d / "tokenizer.json").exists()
        assert json.loads((d / "train.json").read_text())["pairs"] == 200
    results = pd.read_csv(root / "results.csv")
    assert list(results.columns[:11]) == ["model", "method", "strategy", "loss", "beta", "recipe", "round", "kl_coef",
                                          "run", "reward_mean", "reward_std"]  # fmt: skip
    assert {"diversity", "positive_rate", "distinct_1", "distinct_2", "kl_seq", "kl_token", "share_above_0",
            "share_above_0.5", "reward_p05", "reward_p95", "mean_tokens"} <= set(results.columns)  # fmt: skip
    assert len(results) == (1 + len(MODELS)) * 2
    original = results[results.model == "original"]
    assert original.strategy.isna().all() and original.loss.isna().all() and original.beta.isna().all()
    assert results.diversity.between(0.1, 10).all() and results.positive_rate.between(0, 1).all()
    assert (original.kl_seq == 0).all() and (results[results.model != "original"].kl_seq != 0).all()
    report = (root / "report.md").read_text()
    for s in STRATEGIES:
        assert f"plots/rewards-{s}.png" in report and (root / "plots" / f"rewards-{s}.png").stat().st_size > 5000
    assert "| original model |" in report and "| sigmoid 0.1 (default) |" in report and "| hinge 0.1 (default) |" in report
    assert "Pareto-optimal" in report and (root / "plots" / "frontier-reward-vs-kl.png").stat().st_size > 5000
    models = json.loads((root / "models.json").read_text())
    assert "accuracy" in models["reward_model"] and "perplexity" in models["policy"]
    assert not list(root.rglob(".*tmp*"))


def test_second_run_does_no_work(tiny_run):
    root, _ = tiny_run
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    proc = prefalign("run", "tiny", "--set", f"run_dir={root}")
    after = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    changed = {p for p in before if after.get(p) != before[p]} - {root / "config.yaml", root / "models.json"}
    assert not changed, changed
    assert "trained in" not in proc.stdout and "samples/s" not in proc.stdout
    assert proc.stdout.count("up to date") == 1 + 3 + len(MODELS) + (1 + len(MODELS)) + 1


def test_changing_a_setting_redoes_only_what_depends_on_it(tiny_run):
    root, _ = tiny_run
    proc = prefalign("run", "tiny", "--set", f"run_dir={root}", "--set", "evaluate.runs=3")
    assert "trained in" not in proc.stdout and "pairs random:" in proc.stdout and "sample: up to date" in proc.stdout
    assert proc.stdout.count(" run 2: ") == 1 + len(MODELS) and " run 0: " not in proc.stdout
    assert len(pd.read_csv(root / "results.csv")) == (1 + len(MODELS)) * 3


def test_killed_mid_training_resumes_and_completes(tiny_dir, tmp_path):
    root = tmp_path / "run"
    cmd = [sys.executable, "-m", "prefalign.cli", "run", "tiny", "--set", f"run_dir={root}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy())
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "train margin-sigmoid" in line:  # two models done, the third in progress
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    assert not (root / "models" / MODELS[2] / "train.json").exists()
    proc = prefalign("run", "tiny", "--set", f"run_dir={root}")
    assert proc.stdout.count("trained in") == len(MODELS) - 2
    assert len(pd.read_csv(root / "results.csv")) == (1 + len(MODELS)) * 2


def test_single_stage_command_stops_after_that_stage(tiny_dir, tmp_path):
    root = tmp_path / "run"
    prefalign("pairs", "tiny", "--set", f"run_dir={root}")
    assert (root / "pairs" / "threshold.parquet").exists() and not (root / "models").exists()


def test_impossible_pairs_exit_1_with_the_reason(tiny_dir, tmp_path):
    proc = prefalign("pairs", "tiny", "--set", f"run_dir={tmp_path / 'run'}", "--set", "pairs.threshold=100",
                     check=False)  # fmt: skip
    assert proc.returncode == 1
    assert "threshold: cannot build any pair" in proc.stderr and "Traceback" not in proc.stderr


def test_help_lists_the_stages():
    out = prefalign("--help").stdout
    for stage in ("run", "sample", "pairs", "train", "evaluate", "report"):
        assert stage in out
    assert "--set" in prefalign("run", "--help").stdout
