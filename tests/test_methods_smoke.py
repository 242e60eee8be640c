"""The new methods end to end through the real CLI at tiny size: corpus prompts, the best_worst /
stratified / quantile pair rules, slic and ipo, two iterative rounds, an RLOO model, the frontier."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from test_cli_smoke import outputs, prefalign

# The iterative chain's round 1 is the quantile-sigmoid-0.1 grid model (same pairs, start and loss).
MODELS = [
    "best_worst-slic-beta0.1-default",
    "stratified-ipo-beta0.5-default",
    "quantile-sigmoid-beta0.1-default",
    "iter-quantile-sigmoid-beta0.1-default-r2",
    "rloo-kl0.1",
]


@pytest.fixture(scope="module")
def methods_run(tiny_dir, tmp_path_factory):
    from prefalign.models.builtin import synthetic_corpus

    base = tmp_path_factory.mktemp("methods")
    texts, labels = synthetic_corpus(200, seed=5)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(base / "corpus.csv", index=False)
    root = base / "run"
    args = [
        "run",
        "tiny",
        "--set",
        f"run_dir={root}",
        "--set",
        f"sampling.prompts={{corpus: {base / 'corpus.csv'}, min_tokens: 2, max_tokens: 4, per_prompt: 4}}",
        "--set",
        "pairs.strategies=[best_worst]",
        "--set",
        "pairs.count=40",
        "--set",
        "pairs.interval=[-4.5, 4.5]",
        "--set",
        "pairs.bins=2",
        "--set",
        "train.losses=[slic]",
        "--set",
        "train.extra=[{strategy: stratified, loss: ipo, beta: 0.5}, {strategy: quantile, loss: sigmoid, beta: 0.1}]",
        "--set",
        "iterative.rounds=2",
        "--set",
        "iterative.samples=200",
        "--set",
        "iterative.strategy=quantile",
        "--set",
        "online.kl_coefs=[0.1]",
        "--set",
        "online.steps=4",
        "--set",
        "evaluate.samples=100",
        "--set",
        "train.report_to=[tensorboard]",
    ]
    return root, prefalign(*args), args


def test_every_method_is_trained_and_evaluated(methods_run):
    root, proc, _ = methods_run
    results = pd.read_csv(root / "results.csv")
    results = results[results.method != "best_of_n"]  # the tiny preset's best-of-N reference
    assert list(dict.fromkeys(results.model)) == ["original"] + MODELS
    assert set(results.method) == {"original", "dpo", "iterative", "rloo"}
    assert results[results.method == "iterative"]["round"].tolist() == [2, 2]
    for m in MODELS:
        assert (root / "models" / m / "model.safetensors").exists()
    slic = json.loads((root / "models" / MODELS[0] / "train.json").read_text())
    assert slic["settings"]["loss_type"] == ["hinge", "sft"] and slic["settings"]["loss_weights"] == [1.0, 0.1]
    r2 = json.loads((root / "models" / MODELS[3] / "train.json").read_text())
    # round 2 starts from round 1, the grid model itself (trained once, not copied), with the original as reference
    assert r2["base_model"] == str(root / "models" / MODELS[2]) and r2["reference_model"] == "prefalign:tiny"
    assert not (root / "models" / "iter-quantile-sigmoid-beta0.1-default-r1").exists()
    round_2 = root / "iterative" / "iter-quantile-sigmoid-beta0.1-default" / "round-2"
    assert (round_2 / "samples.parquet").exists() and (round_2 / "pairs.parquet").exists()
    # round 2's pairs come from round 1's own samples, not the original's
    assert set(pd.read_parquet(round_2 / "pairs.parquet").chosen) <= set(
        pd.read_parquet(round_2 / "samples.parquet").text
    )
    rloo = json.loads((root / "models" / "rloo-kl0.1" / "train.json").read_text())
    assert rloo["method"] == "rloo" and rloo["kl_coef"] == 0.1
    # The trained models' configs keep the original's (no pad id, cache on), not the Trainers' settings.
    for m in ("rloo-kl0.1", MODELS[3]):
        config = json.loads((root / "models" / m / "config.json").read_text())
        assert config["use_cache"] is True and config.get("pad_token_id") is None


def test_prompts_reach_samples_pairs_and_evaluation(methods_run):
    root, _, _ = methods_run
    samples = pd.read_parquet(root / "samples.parquet")
    # k = 4 samples per prompt (two corpus texts may start with the same words: then 8, one group)
    assert samples.groupby("prompt").size().mod(4).eq(0).all()
    for strategy in ("best_worst", "stratified", "quantile"):
        pairs = pd.read_parquet(root / "pairs" / f"{strategy}.parquet")
        assert len(pairs) == 40 and pairs.prompt.str.startswith("<|endoftext|>").all()
        # pairs stay within one prompt: both texts were sampled from the pair's own prompt
        by_prompt = samples.groupby("prompt").text.apply(set)
        for p, c, r in zip(pairs.prompt.str.removeprefix("<|endoftext|>"), pairs.chosen, pairs.rejected):
            assert c in by_prompt[p] and r in by_prompt[p]
    evals = pd.read_parquet(root / "eval" / MODELS[0] / "run-00.parquet")
    assert "prompt" in evals.columns and {"logp", "logp_ref", "n_scored"} <= set(evals.columns)


def test_report_has_frontier_and_rounds(methods_run):
    root, _, _ = methods_run
    report = (root / "report.md").read_text()
    for png in ("frontier-reward-vs-kl.png", "frontier-reward-vs-diversity.png"):
        assert f"plots/{png}" in report and (root / "plots" / png).stat().st_size > 5000
    assert "## On-policy rounds and online RL" in report and "| rloo-kl0.1 |" in report
    assert "| quantile-sigmoid-beta0.1-default (round 1 of iter-quantile-sigmoid-beta0.1-default) |" in report
    assert "Pareto-optimal models" in report
    for curves in ("training-iterative.png", "training-rloo.png", "training-best_worst.png"):
        assert f"plots/{curves}" in report and (root / "plots" / curves).stat().st_size > 5000


def test_rerun_is_a_no_op(methods_run):
    root, _, args = methods_run
    before = outputs(root)
    prefalign(*args)
    assert outputs(root) == before


def test_every_trainer_logs_to_tensorboard(methods_run):
    """train.report_to: each model's event files hold what its train.json's log history holds."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, _, _ = methods_run
    assert sorted(p.name for p in (root / "logs" / "tensorboard").iterdir()) == sorted(MODELS)
    for model in MODELS:
        events = EventAccumulator(str(root / "logs" / "tensorboard" / model))
        events.Reload()
        history = json.loads((root / "models" / model / "train.json").read_text())["log_history"]
        metric = "reward" if model.startswith("rloo") else "loss"
        logged = [(h["step"], h[metric]) for h in history if metric in h]
        assert logged, model
        scalars = events.Scalars(f"train/{metric}")
        assert [e.step for e in scalars] == [step for step, _ in logged], model
        assert [e.value for e in scalars] == pytest.approx([value for _, value in logged], rel=1e-6), model
