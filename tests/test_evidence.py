"""The best-of-N reference and the judges: choices, KL values, resume, and scores equal to scoring
the saved texts directly (on the session's `prefalign run tiny`, whose preset sets both)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from prefalign.engine.metrics import best_of_n_choice
from prefalign.engine.scoring import score_texts
from prefalign.pipeline.evidence_items import best_of_n_kl

LADDER = [1, 2, 4, 8]
CHOSEN = 100  # baselines.best_of_n_samples of the tiny preset


def test_best_of_n_choice_is_the_first_highest_reward_of_the_first_n_draws():
    rewards = np.array([[0.0, 5.0, 1.0, 2.0], [3.0, 5.0, 0.5, 2.0], [1.0, 9.0, 4.0, 2.0]])  # (draws, rows)
    assert best_of_n_choice(rewards, 1).tolist() == [0, 0, 0, 0]
    assert best_of_n_choice(rewards, 2).tolist() == [1, 0, 0, 0]  # a tie keeps the earlier draw
    assert best_of_n_choice(rewards, 3).tolist() == [1, 2, 2, 0]
    rng = np.random.default_rng(0)
    many = rng.normal(size=(16, 50))
    for n in (1, 3, 16):
        picked = best_of_n_choice(many, n)
        assert np.array_equal(many[picked, np.arange(50)], many[:n].max(axis=0))
    with pytest.raises(ValueError):
        best_of_n_choice(many, 17)


def test_best_of_n_kl_is_the_analytic_bound():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert best_of_n_kl(64) == pytest.approx(math.log(64) - 63 / 64)


def draws_of(root, k: int) -> list[pd.DataFrame]:
    """Run k's 8 draws: the original's evaluation run, then the pool's rows in blocks of CHOSEN."""
    first = pd.read_parquet(root / "eval" / "original" / f"run-{k:02d}.parquet").head(CHOSEN)
    pool = pd.read_parquet(root / "eval" / "best-of-n" / f"run-{k:02d}-pool.parquet")
    assert len(pool) == 7 * CHOSEN
    return [first, *(pool.iloc[j * CHOSEN : (j + 1) * CHOSEN].reset_index(drop=True) for j in range(7))]


def test_best_of_n_choices_are_the_max_of_each_pool_group(tiny_run):
    root, _ = tiny_run
    for k in range(2):
        draws = draws_of(root, k)
        assert all(len(d) == CHOSEN for d in draws)
        rewards = np.stack([d.reward.to_numpy() for d in draws])
        choices = pd.read_parquet(root / "eval" / "best-of-n" / f"run-{k:02d}-choices.parquet")
        assert sorted(set(choices.n)) == LADDER
        for n in LADDER:
            chosen = choices[choices.n == n].sort_values("row")
            assert np.array_equal(chosen.reward.to_numpy(), rewards[:n].max(axis=0))
            texts = [draws[j].text.iloc[i] for i, j in zip(chosen.row, chosen.draw)]
            assert chosen.text.tolist() == texts
        # the draws are different samples, not one sample repeated
        assert draws[1].text.tolist() != draws[2].text.tolist()


def test_best_of_1_is_the_original_evaluation_and_kl_is_the_formula(tiny_run):
    root, _ = tiny_run
    results = pd.read_csv(root / "results.csv")
    best = results[results.method == "best_of_n"]
    assert sorted(set(best.model)) == [f"best-of-{n}" for n in LADDER]
    for n in LADDER:
        rows = best[best.best_of == n]
        assert len(rows) == 2  # one per evaluation run
        assert np.allclose(rows.kl_seq, best_of_n_kl(n))
    for k in range(2):
        choices = pd.read_parquet(root / "eval" / "best-of-n" / f"run-{k:02d}-choices.parquet")
        original = pd.read_parquet(root / "eval" / "original" / f"run-{k:02d}.parquet").head(CHOSEN)
        one = choices[choices.n == 1].sort_values("row")
        assert one.text.tolist() == original.text.tolist()
        assert np.array_equal(one.reward.to_numpy(), original.reward.to_numpy())
    by_n = best.groupby("best_of").reward_mean.mean()
    assert by_n.is_monotonic_increasing  # nested pools: a larger N never keeps a lower reward
    report = (root / "report.md").read_text()
    assert "| best-of-8 |" in report and (root / "plots" / "judges.png").exists()


def test_judge_scores_equal_scoring_the_saved_texts(tiny_run):
    from prefalign.models.loading import load_classifier

    root, _ = tiny_run
    model, tokenizer = load_classifier("prefalign:tiny-judge", None, torch.device("cpu"))
    positive = model.config.label2id["POSITIVE"]
    results = pd.read_csv(root / "results.csv")
    for name in ("original", "random-sigmoid-beta0.1-default"):
        for k in range(2):
            texts = pd.read_parquet(root / "eval" / name / f"run-{k:02d}.parquet").text.tolist()
            direct = score_texts(texts, model, tokenizer, positive)["reward"]
            stored = pd.read_parquet(root / "eval" / name / "judge-other" / f"run-{k:02d}.parquet")
            assert np.allclose(stored.reward.to_numpy(), direct, atol=1e-5)
            row = results[(results.model == name) & (results.run == k)].iloc[0]
            assert row.judge_other_reward_mean == pytest.approx(float(np.mean(direct)), abs=1e-5)
            assert row.judge_other_reward_mean != pytest.approx(row.reward_mean, abs=1e-3)  # another classifier
    choices = pd.read_parquet(root / "eval" / "best-of-n" / "run-00-choices.parquet")
    judged = pd.read_parquet(root / "eval" / "best-of-n" / "judge-other" / "run-00.parquet")
    assert len(judged) == len(choices)
    direct = score_texts(choices.text.tolist(), model, tokenizer, positive)["reward"]
    assert np.allclose(judged.reward.to_numpy(), direct, atol=1e-5)


def test_judge_and_fluency_score_every_training_curve_point_as_scoring_its_texts(tiny_run):
    from prefalign.engine.fluency import fluency_scores
    from prefalign.models.loading import load_classifier, load_policy

    root, _ = tiny_run
    judge, judge_tokenizer = load_classifier("prefalign:tiny-judge", None, torch.device("cpu"))
    scorer, scorer_tokenizer = load_policy("prefalign:tiny", None, torch.device("cpu"))
    folder = root / "eval" / "margin-hinge-beta0.1-default"
    points, texts = pd.read_csv(folder / "trajectory.csv"), pd.read_parquet(folder / "trajectory-texts.parquet")
    judged, fluency = (
        pd.read_csv(folder / "judge-other" / "trajectory.csv"),
        pd.read_csv(folder / "fluency" / "trajectory.csv"),
    )
    assert list(judged.step) == list(fluency.step) == list(points.step) == sorted(set(texts.step))
    for step, part in texts.groupby("step"):
        assert len(part) == 40  # evaluate.during_training.samples of the tiny preset
        assert points.set_index("step").reward_mean[step] == pytest.approx(float(part.reward.mean()), abs=1e-5)
        direct = score_texts(part.text.tolist(), judge, judge_tokenizer, judge.config.label2id["POSITIVE"])
        row = judged.set_index("step").loc[step]
        assert row.judge_other_reward_mean == pytest.approx(float(np.mean(direct["reward"])), abs=1e-5)
        assert row.judge_other_positive_rate == pytest.approx(float(np.mean(direct["is_positive"])), abs=1e-9)
        direct = fluency_scores(part.text.tolist(), scorer, scorer_tokenizer)
        assert fluency.set_index("step").fluency[step] == pytest.approx(float(np.nanmean(direct)), abs=1e-4)
    assert (root / "plots" / "judges-along-training.png").stat().st_size > 0


def test_fluency_equals_scoring_the_first_texts_with_the_scorer(tiny_run):
    from prefalign.engine.fluency import fluency_scores
    from prefalign.models.loading import load_policy

    root, _ = tiny_run
    model, tokenizer = load_policy("prefalign:tiny", None, torch.device("cpu"))
    results = pd.read_csv(root / "results.csv")
    texts = pd.read_parquet(root / "eval" / "margin-hinge-beta0.1-default" / "run-01.parquet").text.tolist()[:50]
    direct = fluency_scores(texts, model, tokenizer)
    stored = pd.read_parquet(root / "eval" / "margin-hinge-beta0.1-default" / "fluency" / "run-01.parquet")
    assert len(stored) == 50 and np.allclose(stored.fluency.to_numpy(), direct, atol=1e-4, equal_nan=True)
    row = results[(results.model == "margin-hinge-beta0.1-default") & (results.run == 1)].iloc[0]
    assert row.fluency == pytest.approx(float(np.nanmean(direct)), abs=1e-4)
    assert row.fluency_low_share == pytest.approx(float(np.mean(direct[~np.isnan(direct)] < -6.0)), abs=1e-9)
    assert results.fluency.notna().all()


def test_adding_a_judge_scores_only_what_is_new_and_an_interrupted_pool_resumes(tiny_run, tmp_path, cli):
    root = tmp_path / "run"
    shutil.copytree(tiny_run[0], root)
    evaluations = {p: p.stat().st_mtime_ns for p in (root / "eval").rglob("run-*.json")}  # judges' and fluency's too
    trained = {p: p.stat().st_mtime_ns for p in [*root.glob("models/*/*"), *root.glob("eval/*/trajectory*")]}
    best_json = root / "eval" / "best-of-n" / "run-01.json"
    before = json.loads(best_json.read_text())
    # A kill after run 0's pool and before its metrics; run 1's pool lost (a kill while sampling it).
    pool_0, pool_1 = (root / "eval" / "best-of-n" / f"run-0{k}-pool.parquet" for k in (0, 1))
    (root / "eval" / "best-of-n" / "run-00.json").unlink()
    pool_1.unlink()
    best_json.unlink()
    kept, lost = pool_0.stat().st_mtime_ns, pd.read_parquet(root / "eval" / "best-of-n" / "run-01-choices.parquet")
    judge = "evaluate.judges=[{name: other, model: 'prefalign:tiny-judge'}, {name: self, model: 'prefalign:tiny'}]"
    cli("run", "tiny", "--set", f"run_dir={root}", "--set", judge)
    assert pool_0.stat().st_mtime_ns == kept  # a finished pool is not sampled again
    assert json.loads(best_json.read_text())["per_n"] == before["per_n"]  # the same seed again: the same texts
    assert pd.read_parquet(root / "eval" / "best-of-n" / "run-01-choices.parquet").equals(lost)
    for path, mtime in evaluations.items():
        if path.name not in ("run-00.json", "run-01.json", "run-01-pool.json") or path.parent.name != "best-of-n":
            assert path.stat().st_mtime_ns == mtime, path  # nothing redone but what was lost
    results = pd.read_csv(root / "results.csv")
    # a judge that is the reward model itself (a sanity row): its scores are the rewards
    assert np.allclose(results.judge_self_reward_mean, results.reward_mean, atol=1e-5)
    assert (root / "eval" / "original" / "judge-self" / "run-01.json").exists()
    # The new judge scores the training curves' saved texts: nothing is trained or sampled again.
    assert {p: p.stat().st_mtime_ns for p in trained} == trained
    folder = root / "eval" / "random-sigmoid-beta0.1-default"
    by_self = pd.read_csv(folder / "judge-self" / "trajectory.csv")
    assert np.allclose(by_self.judge_self_reward_mean, pd.read_csv(folder / "trajectory.csv").reward_mean, atol=1e-5)


@pytest.mark.parametrize(
    "override, key",
    [
        ("baselines.best_of_n=[0, 2]", "baselines.best_of_n"),
        ("baselines.best_of_n=[2.5]", "baselines.best_of_n"),
        ("baselines.best_of_n_samples=0", "baselines.best_of_n_samples"),
        ("evaluate.judges=[{name: a, model: 'prefalign:tiny'}, {name: a, model: 'prefalign:tiny'}]", "two judges"),
        ("evaluate.judges=[{name: 'a b', model: 'prefalign:tiny'}]", "evaluate.judges.0.name"),
        ("evaluate.judges=[{name: a, model: 'prefalign:nope'}]", "evaluate.judges.0.model"),
        ("evaluate.judges=[{name: a, model: /no/such/dir}]", "evaluate.judges"),
        ("evaluate.fluency={model: 'prefalign:tiny', samples: 0}", "evaluate.fluency.samples"),
        ("evaluate.during_training={every: 0, samples: 10}", "evaluate.during_training.every"),
    ],
)
def test_bad_evidence_settings_exit_2_naming_the_key(override, key, cli, tmp_path):
    result = cli("plan", "tiny", "--set", f"run_dir={tmp_path}", "--set", override, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert key in result.stderr and "Traceback" not in result.stderr


def test_best_of_n_chooses_at_most_the_evaluation_texts():
    from prefalign.config.loader import load_config
    from prefalign.pipeline.evidence_items import BestOfN
    from prefalign.pipeline.plan import plan

    cfg = load_config("tiny", ["evaluate.samples=64", "baselines.best_of_n_samples=100"])
    (best,) = [item for item in plan(cfg) if isinstance(item, BestOfN)]
    assert best.chosen == 64 and best.ladder == (1, 2, 4, 8)


def test_a_judge_without_the_positive_label_is_refused_while_planning(tiny_dir, tmp_path, cli):
    judge = f"evaluate.judges=[{{name: a, model: '{tiny_dir / 'reward'}', positive_label: GOOD}}]"
    result = cli("plan", "tiny", "--set", f"run_dir={tmp_path}", "--set", judge, check=False)
    assert result.returncode == 2 and "evaluate.judges[0].positive_label 'GOOD'" in result.stderr


def test_a_judge_with_another_tokenizer_scores_with_its_own(tmp_path, cli, tiny_run, tiny_dir):
    """A judge is any classifier with its own tokenizer and label names: here a DistilBERT reading the
    policy's byte-level BPE (the reward reads WordPiece), classes `bad` / `good`."""
    torch.manual_seed(0)
    from transformers import DistilBertConfig, DistilBertForSequenceClassification, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(tiny_dir / "policy")
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    config = DistilBertConfig(
        vocab_size=len(tokenizer), dim=32, hidden_dim=64, n_layers=1, n_heads=2, max_position_embeddings=64
    )
    config.id2label, config.label2id = {0: "bad", 1: "good"}, {"bad": 0, "good": 1}
    judge_dir = tmp_path / "judge"
    DistilBertForSequenceClassification(config).save_pretrained(judge_dir)
    tokenizer.save_pretrained(judge_dir)
    root = tmp_path / "run"
    shutil.copytree(tiny_run[0], root)
    cli(
        "run",
        "tiny",
        "--set",
        f"run_dir={root}",
        "--set",
        f"evaluate.judges=[{{name: bpe, model: '{judge_dir}', positive_label: good}}]",
    )
    results = pd.read_csv(root / "results.csv")
    assert results.judge_bpe_reward_mean.notna().all() and "judge_other_reward_mean" not in results.columns
