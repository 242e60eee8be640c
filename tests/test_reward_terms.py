"""reward.terms: the reward as a weighted sum of terms, each stored in its own column; refused while
planning when malformed; a weight change redoes pairs and training but never samples again."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from prefalign.engine.reward_terms import broken_values, length_values, term_stats, weighted_reward

TERMS = (
    "[{type: classifier}, {type: fluency, weight: 0.5}, {type: length, target: 10, weight: 0.05}, "
    "{type: broken, weight: 2}]"
)
WEIGHTS = {"classifier": 1.0, "fluency": 0.5, "length": 0.05, "broken": 2.0}
# The tiny preset cut down to one pair rule, one loss, an RLOO model and a best-of-N ladder.
SMALL = [
    "sampling.num_samples=120",
    "pairs.strategies=[random]",
    "pairs.count=60",
    "train.losses=[sigmoid]",
    "evaluate.runs=2",
    "evaluate.samples=60",
    "evaluate.during_training={every: 5, samples: 10}",
    "evaluate.judges=[]",
    "evaluate.fluency=null",
    "baselines.best_of_n=[2, 4]",
    "baselines.best_of_n_samples=30",
    "online.kl_coefs=[0.05]",
    "online.steps=2",
]
DPO = "random-sigmoid-beta0.1-default"


def sets(*pairs: str) -> list[str]:
    return [arg for pair in pairs for arg in ("--set", pair)]


def summed(df: pd.DataFrame, weights: dict, stats: dict | None = None) -> np.ndarray:
    """The weighted sum recomputed from a table's saved term columns, by hand."""
    total = np.zeros(len(df))
    for name, w in weights.items():
        v = df[f"reward_{name}"].to_numpy(np.float64)
        if stats is not None:
            v = (v - stats[name]["mean"]) / stats[name]["std"] if stats[name]["std"] > 0 else 0 * v
        total += w * v
    return total


# ---- pure functions -------------------------------------------------------------------------------


def test_the_terms_values_and_their_weighted_sum():
    np.testing.assert_array_equal(length_values(np.array([3, 10, 14]), None), [3, 10, 14])
    np.testing.assert_array_equal(length_values(np.array([3, 10, 14]), 10), [-7, 0, -4])
    np.testing.assert_array_equal(broken_values(["fine", "bro\ufffdken", ""]), [0, -1, 0])
    values = {"a": np.array([1.0, 2.0, 3.0]), "b": np.array([5.0, 5.0, 5.0])}
    np.testing.assert_allclose(weighted_reward(values, {"a": 2.0, "b": -1.0}), [-3.0, -1.0, 1.0])
    stats = term_stats(values)
    assert stats["a"] == {"mean": 2.0, "std": 1.0} and stats["b"] == {"mean": 5.0, "std": 0.0}
    # Standardised: a's (v - 2) / 1; b is constant on the stats' texts, so it adds nothing.
    np.testing.assert_allclose(weighted_reward(values, {"a": 2.0, "b": -1.0}, stats), [-2.0, 0.0, 2.0])


# ---- refused while planning -----------------------------------------------------------------------


def refused(proc, *words):
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in proc.stderr, (word, proc.stderr)


@pytest.mark.parametrize(
    "terms, words",
    [
        ("[{type: classifier}, {type: sentiment}]", ["reward.terms", "sentiment", "length"]),
        ("[{type: classifier, weight: heavy}]", ["reward.terms", "weight", "heavy"]),
        ("[{type: classifier, weight: true}]", ["reward.terms", "weight"]),
        ("[{type: classifier, weight: 0}, {type: length, weight: 0}]", ["reward", "every weight is 0"]),
        ("[{type: classifier}, {type: classifier, model: 'prefalign:tiny-judge'}]", ["reward", "'classifier'"]),
        ("[{type: length, target: 5}]", ["reward", "classifier"]),
        ("[{type: classifier, name: 'a b'}]", ["reward.terms", "'a b'"]),
        ("[{type: length, target: -3}, {type: classifier}]", ["reward.terms", "target"]),
    ],
)
def test_a_malformed_term_is_refused_naming_the_key(tmp_path, cli, terms, words):
    proc = cli("plan", "tiny", *sets(f"run_dir={tmp_path / 'run'}", f"reward.terms={terms}"), check=False)
    refused(proc, *words)
    assert not (tmp_path / "run").exists()


def test_normalize_without_terms_is_refused(tmp_path, cli):
    refused(cli("plan", "tiny", *sets(f"run_dir={tmp_path}", "reward.normalize=true"), check=False), "normalize")


def test_a_term_s_model_is_checked_like_the_reward_model(tiny_dir, tmp_path, cli):
    run_dir = f"run_dir={tmp_path / 'run'}"
    missing = f"[{{type: classifier}}, {{type: classifier, name: other, model: {tmp_path / 'nowhere'}}}]"
    refused(cli("plan", "tiny", *sets(run_dir, f"reward.terms={missing}"), check=False), "reward.terms[1].model")
    label = (
        f"[{{type: classifier}}, {{type: classifier, name: other, model: {tiny_dir / 'reward'}, positive_label: NOPE}}]"
    )
    refused(cli("plan", "tiny", *sets(run_dir, f"reward.terms={label}"), check=False), "reward.terms[1]", "NOPE")
    policy_only = f"[{{type: classifier}}, {{type: fluency, model: {tiny_dir / 'reward'}}}]"
    refused(cli("plan", "tiny", *sets(run_dir, f"reward.terms={policy_only}"), check=False), "reward.terms[1].model")
    assert not (tmp_path / "run").exists()


# ---- a run with terms -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sampled(tiny_dir, tmp_path_factory):
    """A small tiny run with four terms; then the same run directory after a weight change and after
    `normalize`, each time with the descriptions of every sampling it did (engine generate calls)."""
    import prefalign.engine.sample_file as sample_file
    from prefalign.cli import main

    root = tmp_path_factory.mktemp("terms") / "run"
    generate, calls = sample_file.generate, []

    def spy(*args, desc="", **kwargs):
        calls.append(desc)
        return generate(*args, desc=desc, **kwargs)

    sample_file.generate = spy
    states = {}
    try:
        for name, extra in [
            ("first", [f"reward.terms={TERMS}"]),
            ("reweighed", [f"reward.terms={TERMS.replace('weight: 0.5', 'weight: 1.5')}"]),
            ("normalized", [f"reward.terms={TERMS.replace('weight: 0.5', 'weight: 1.5')}", "reward.normalize=true"]),
        ]:
            calls.clear()
            update = ["--update"] if states else []  # the run directory holds the first config's outputs
            assert main(["run", "tiny", *update, *sets(f"run_dir={root}", *SMALL, *extra)]) == 0
            states[name] = snapshot(root, list(calls))
    finally:
        sample_file.generate = generate
    return root, states


def snapshot(root, calls) -> dict:
    read = lambda p: json.loads((root / p).read_text())  # noqa: E731
    return {
        "calls": calls,
        "samples": pd.read_parquet(root / "samples.parquet"),
        "samples_meta": read("samples.meta.json"),
        "pairs_key": read("pairs/random.meta.json")["key"],
        "dpo_key": read(f"models/{DPO}/train.json")["key"],
        "rloo_key": read("models/rloo-kl0.05/train.json")["key"],
        "original_run": pd.read_parquet(root / "eval/original/run-00.parquet"),
        "dpo_run": pd.read_parquet(root / f"eval/{DPO}/run-00.parquet"),
        "results": pd.read_csv(root / "results.csv"),
        "report": (root / "report.md").read_text(),
    }


def test_every_reward_is_the_weighted_sum_of_its_saved_term_columns(sampled):
    root, states = sampled
    first = states["first"]
    for table in (first["samples"], first["original_run"], first["dpo_run"]):
        for name in WEIGHTS:
            assert f"reward_{name}" in table.columns
        np.testing.assert_allclose(table["reward"], summed(table, WEIGHTS), rtol=1e-5, atol=1e-4)
    # The length and broken terms are what they say, from the same table's texts.
    samples = first["samples"]
    np.testing.assert_array_equal(samples["reward_length"], -np.abs(samples["n_tokens"] - 10))
    np.testing.assert_array_equal(samples["reward_broken"], -samples["text"].str.contains("\ufffd").astype(float))
    # results.csv: each term's mean of each run beside the sum's, and the report lists the terms.
    results = first["results"].set_index(["model", "run"])
    assert results.loc[("original", 0), "reward_fluency_mean"] == pytest.approx(
        first["original_run"]["reward_fluency"].mean(), rel=1e-5
    )
    assert results.loc[(DPO, 0), "reward_mean"] == pytest.approx(first["dpo_run"]["reward"].mean(), rel=1e-5)
    assert "| term classifier |" in first["report"] and "| fluency | fluency | 0.5 |" in first["report"]
    # The classifier term's stats on the original's samples, as the report shows them to set weights by.
    stats = first["samples_meta"]["term_stats"]["classifier"]
    assert stats["mean"] == pytest.approx(samples["reward_classifier"].mean(), rel=1e-5)


def test_best_of_n_picks_the_highest_weighted_sum(sampled):
    root, states = sampled
    # The run directory as the last run left it: fluency weighted 1.5, every term standardised.
    weights, stats = {**WEIGHTS, "fluency": 1.5}, states["normalized"]["samples_meta"]["term_stats"]
    choices = pd.read_parquet(root / "eval/best-of-n/run-00-choices.parquet")
    original = pd.read_parquet(root / "eval/original/run-00.parquet").head(30)
    pool = pd.read_parquet(root / "eval/best-of-n/run-00-pool.parquet")
    for n in (2, 4):
        chosen = choices[choices.n == n].set_index("row")
        for row in range(30):
            candidates = pd.DataFrame([original.iloc[row]] + [pool.iloc[j * 30 + row] for j in range(n - 1)])
            sums = summed(candidates, weights, stats)
            assert chosen.loc[row, "draw"] == int(np.argmax(sums))
            assert chosen.loc[row, "reward"] == pytest.approx(sums.max(), rel=1e-5, abs=1e-4)


def test_fluency_is_a_direct_forward_pass_of_the_original(sampled, tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, states = sampled
    model = AutoModelForCausalLM.from_pretrained(tiny_dir / "policy").eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir / "policy")
    samples = states["first"]["samples"].head(25)
    for text, stored in zip(samples["text"], samples["reward_fluency"]):
        ids = [tokenizer.bos_token_id] + tokenizer.encode(text, add_special_tokens=False)
        if len(ids) < 2:  # an empty text: the term's `empty` value
            assert stored == -10.0
            continue
        with torch.no_grad():
            logp = model(torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
        assert stored == pytest.approx(float(logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].mean()), abs=1e-4)


def test_a_weight_change_redoes_pairs_and_training_but_never_samples(sampled):
    _, states = sampled
    first, again = states["first"], states["reweighed"]
    assert any(call == "samples" for call in first["calls"])
    # Not the pair samples, not the original's evaluation runs: only models trained anew are sampled.
    assert not [c for c in again["calls"] if c == "samples" or "original" in c or "best-of-N" in c], again["calls"]
    pd.testing.assert_series_equal(again["samples"]["text"], first["samples"]["text"])
    pd.testing.assert_series_equal(again["samples"]["reward_fluency"], first["samples"]["reward_fluency"])
    new_weights = {**WEIGHTS, "fluency": 1.5}
    for table in (again["samples"], again["original_run"]):
        np.testing.assert_allclose(table["reward"], summed(table, new_weights), rtol=1e-5, atol=1e-4)
    assert again["pairs_key"] != first["pairs_key"]
    assert again["dpo_key"] != first["dpo_key"] and again["rloo_key"] != first["rloo_key"]
    np.testing.assert_allclose(again["dpo_run"]["reward"], summed(again["dpo_run"], new_weights), rtol=1e-5, atol=1e-4)


def test_normalize_standardises_each_term_on_the_original_s_samples(sampled):
    _, states = sampled
    norm = states["normalized"]
    assert not [c for c in norm["calls"] if c == "samples" or "original" in c], norm["calls"]
    stats = norm["samples_meta"]["term_stats"]
    samples = norm["samples"]
    for name in WEIGHTS:
        column = samples[f"reward_{name}"].to_numpy(np.float64)
        assert stats[name]["mean"] == pytest.approx(column.mean(), rel=1e-5, abs=1e-6)
        assert stats[name]["std"] == pytest.approx(column.std(ddof=1), rel=1e-5, abs=1e-6)
    weights = {**WEIGHTS, "fluency": 1.5}
    for table in (samples, norm["original_run"], norm["dpo_run"]):
        np.testing.assert_allclose(table["reward"], summed(table, weights, stats), rtol=1e-5, atol=1e-4)
    assert math.isclose(float(samples["reward"].mean()), 0.0, abs_tol=1e-4)  # every term centred on these texts


def test_rloo_s_reward_function_scores_each_completion_with_its_length_before_eos():
    from prefalign.stages.train_rloo import TermsReward

    seen = {}

    def scorer(full, completions, n_tokens):
        seen.update(full=full, completions=completions, n_tokens=list(n_tokens))
        return {"reward": np.array([0.5, -1.0], dtype=np.float32)}

    reward = TermsReward(scorer, eos=0)
    # TRL's completion ids run up to and including EOS; a completion cut at the length limit has none.
    got = reward(["", ""], ["good film", "bad"], completion_ids=[[5, 6, 0], [7]])
    assert got == [0.5, -1.0]
    assert seen == {"full": ["good film", "bad"], "completions": ["good film", "bad"], "n_tokens": [2, 1]}
    assert reward.__name__ == "classifier"  # the name TRL logs the reward under
