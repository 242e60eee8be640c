"""The real-model preset: offline it fails fast and clearly; with local stand-ins it runs end to end."""

import time

import helpers
import pandas as pd
import pytest

from prefalign.config.loader import load_config


def prefalign(*args):
    return helpers.prefalign(*args, check=False)


def test_imdb_preset_is_the_original_experiment():
    cfg = load_config("imdb")
    assert (cfg.policy.model, cfg.reward.model) == ("lvwerra/gpt2-imdb", "lvwerra/distilbert-imdb")
    assert (cfg.sampling.num_samples, cfg.pairs.count, cfg.evaluate.runs, cfg.evaluate.samples) == (
        10000,
        20000,
        10,
        5000,
    )
    assert cfg.train.recipe == "seed" and cfg.train.losses == ["sigmoid", "hinge"] and cfg.train.betas == [0.1, 1.0]


@pytest.mark.slow  # the CLI in a new process
def test_imdb_preset_offline_fails_fast_with_advice(tmp_path):
    t0 = time.time()
    proc = prefalign("run", "imdb", "--set", f"run_dir={tmp_path / 'run'}")
    assert proc.returncode == 1
    assert time.time() - t0 < 60
    assert "lvwerra/gpt2-imdb" in proc.stderr and "policy.model" in proc.stderr and "Traceback" not in proc.stderr


def test_imdb_preset_runs_with_local_gpt2_and_distilbert_stand_ins(tiny_dir, tmp_path):
    # The tiny models follow the real ones' conventions: GPT-2 with BOS = EOS = <|endoftext|> and no
    # pad token, DistilBERT with NEGATIVE / POSITIVE labels.
    root = tmp_path / "run"
    sets = [
        f"run_dir={root}",
        f"policy.model={tiny_dir / 'policy'}",
        f"reward.model={tiny_dir / 'reward'}",
        "sampling.num_samples=200",
        "sampling.max_length=32",
        "pairs.count=64",
        "pairs.threshold=0.0",
        "pairs.strategies=[random,threshold]",
        "train.betas=[0.1]",
        "train.losses=[hinge]",
        "train.dpo={num_train_epochs: 1}",
        "evaluate.runs=2",
        "evaluate.samples=64",
    ]
    proc = prefalign("run", "imdb", *[a for s in sets for a in ("--set", s)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = pd.read_csv(root / "results.csv")
    assert set(results.model) == {"original", "random-hinge-beta0.1-seed", "threshold-hinge-beta0.1-seed"}
    assert (root / "report.md").exists()
