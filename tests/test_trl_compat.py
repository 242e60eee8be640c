"""On the TRL releases it was checked against, training uses prefalign's lean trainer and patches;
on any other, TRL's own DPOTrainer trains the model untouched, and the log says so once."""

import pandas as pd
import pytest

from prefalign.engine import trl_compat
from prefalign.stages.train_dpo import train_one
from prefalign.training.job import DpoJob


def _pretend(monkeypatch, version: str) -> None:
    monkeypatch.setattr(trl_compat, "installed_trl", lambda: version)


@pytest.mark.parametrize(
    "version, usable", [("1.16.0", True), ("1.16.4", True), ("1.17.0", False), ("1.15.2", False), ("2.0.0", False)]
)
def test_the_lean_trainer_is_usable_on_the_checked_trl_series_only(monkeypatch, version, usable):
    _pretend(monkeypatch, version)
    assert trl_compat.lean_trainer_usable() is usable


def test_the_installed_trl_is_a_checked_one():
    assert trl_compat.installed_trl() == __import__("trl").__version__
    assert trl_compat.lean_trainer_usable(), "constraints.txt pins a TRL that CHECKED_TRL covers"


def test_on_an_unchecked_trl_no_internal_of_trl_is_patched(monkeypatch):
    import trl.trainer.rloo_trainer as rloo
    import trl.trainer.utils as trl_utils

    _pretend(monkeypatch, "1.17.0")
    head, load = trl_utils._use_triton, rloo.create_model_from_path
    with trl_compat.completion_tokens_only(), trl_compat.rloo_reference_is(object()):
        assert trl_utils._use_triton is head and rloo.create_model_from_path is load
    _pretend(monkeypatch, "1.16.0")
    with trl_compat.completion_tokens_only(), trl_compat.rloo_reference_is(object()):
        assert trl_utils._use_triton is not head and rloo.create_model_from_path is not load
    assert trl_utils._use_triton is head and rloo.create_model_from_path is load


def _train(tiny_dir, tmp_path, name: str) -> tuple[dict, list[str]]:
    pairs = pd.DataFrame(
        {"prompt": "<|endoftext|>", "chosen": ["Superb, I loved it."] * 8, "rejected": ["Awful and dull."] * 8}
    )
    pairs.to_parquet(tmp_path / "pairs.parquet")
    lines: list[str] = []
    overrides = {"max_steps": 2, "logging_steps": 1, "learning_rate": 1e-2}
    job = DpoJob(tmp_path / "pairs.parquet", str(tiny_dir / "policy"), tmp_path / name, overrides=overrides)
    return train_one(job, log=lines.append), lines


def test_on_another_trl_release_trls_own_dpo_trainer_trains_the_model(tiny_dir, tmp_path, monkeypatch):
    _pretend(monkeypatch, "1.17.0")
    info, lines = _train(tiny_dir, tmp_path, "plain")
    assert info["trainer"] == "DPOTrainer" and info["step_compiled_as"] == "eager"
    assert (tmp_path / "plain" / "model.safetensors").exists() and (tmp_path / "plain" / "README.md").exists()
    assert sum("loss" in h for h in info["log_history"]) == 2
    said = [line for line in lines if "TRL 1.17.0 is not a release prefalign was checked against" in line]
    assert len(said) == 1 and "TRL's own DPOTrainer" in said[0] and "1.16.x" in said[0]


def test_on_the_checked_trl_release_the_lean_trainer_trains_the_model(tiny_dir, tmp_path):
    info, lines = _train(tiny_dir, tmp_path, "lean")
    assert info["trainer"] == "LeanDPOTrainer"
    assert (tmp_path / "lean" / "model.safetensors").exists()
    assert not any("checked against" in line for line in lines)
