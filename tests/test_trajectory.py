"""Scores along training (`evaluate.during_training`): a row per point in eval/<model>/trajectory.csv,
the same weights as without it, resumes without a duplicate or a gap, and the report's curves."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from helpers import kill_after_a_checkpoint, prefalign

from prefalign.config.loader import load_config
from prefalign.pipeline.items import DpoModel, Original, RewardModel, RlooModel
from prefalign.pipeline.plan import plan

DPO, ROUND, RLOO = "random-sigmoid-beta0.1-default", "iter-random-sigmoid-beta0.1-default-r2", "rloo-kl0.1"
# One grid model (round 1 of a two-round chain) and one RLOO model of 12 steps; a short evaluation.
SMALL = [
    "pairs.strategies=[random]",
    "train.losses=[sigmoid]",
    "iterative.rounds=2",
    "online.kl_coefs=[0.1]",
    "online.steps=12",
    "evaluate.runs=1",
    "evaluate.samples=100",
]
TRACED = "evaluate.during_training={every: 10, samples: 40}"
METRICS = ["reward_mean", "kl_seq", "kl_token", "diversity", "distinct_2", "broken_share", "positive_rate"]


def sets(*overrides: str) -> list[str]:
    return [arg for override in overrides for arg in ("--set", override)]


def files(root, pattern: str) -> dict:
    """Relative path -> modification time of the files matching `pattern`, the report's metadata left out."""
    found = {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.glob(pattern)}
    return {p: t for p, t in found.items() if p != "report.meta.json"}


@pytest.fixture(scope="module")
def traced(tiny_dir, tmp_path_factory):
    """(run directory, what the run without during_training left): a finished run, then the same
    config with evaluate.during_training turned on."""
    from prefalign.cli import main

    root = tmp_path_factory.mktemp("traced") / "run"
    assert main(["run", "tiny", *sets(f"run_dir={root}", *SMALL, "evaluate.during_training=null")]) == 0
    before = {
        "data": files(root, "**/*.parquet") | files(root, "*.meta.json") | files(root, "eval/*/run-*.json"),
        "trained": files(root, "models/*/train.json"),
        "weights": {m: (root / "models" / m / "model.safetensors").read_bytes() for m in (DPO, ROUND, RLOO)},
    }
    assert not list(root.glob("eval/*/trajectory.csv"))
    assert main(["run", "tiny", *sets(f"run_dir={root}", *SMALL, TRACED)]) == 0
    return root, before


def trajectory(root, model: str) -> pd.DataFrame:
    return pd.read_csv(root / "eval" / model / "trajectory.csv")


def test_a_row_at_step_0_every_every_steps_and_the_last(traced):
    root, _ = traced
    for model, steps in ((DPO, [0, 10, 20, 25]), (ROUND, [0, 10, 20, 25]), (RLOO, [0, 10, 12])):
        rows = trajectory(root, model)
        assert list(rows.step) == steps, model
        assert list(rows.columns) == ["step", "epoch", *METRICS, "mean_tokens", "seconds"]
        assert rows.epoch.iloc[0] == 0 and rows.epoch.iloc[-1] == pytest.approx(1.0)
        assert rows[METRICS].notna().all().all() and (rows.seconds >= 0).all()
        meta = json.loads((root / "eval" / model / "trajectory.json").read_text())
        assert (meta["every"], meta["samples"], meta["steps"]) == (10, 40, steps)


def test_points_start_at_the_start_model(traced):
    root, _ = traced
    dpo, round_2, rloo = (trajectory(root, m) for m in (DPO, ROUND, RLOO))
    # Round 1 and RLOO start from the original: KL 0, and the same texts (same seed, same weights).
    assert dpo.kl_seq.iloc[0] == 0 and rloo.kl_seq.iloc[0] == 0
    pd.testing.assert_series_equal(dpo[METRICS].iloc[0], rloo[METRICS].iloc[0], check_names=False)
    assert (dpo.kl_seq.iloc[1:] > 0).all() and (rloo.kl_seq.iloc[1:] > 0).all()
    # Round 2 starts from round 1's last weights: its first point is round 1's last.
    pd.testing.assert_series_equal(round_2[METRICS].iloc[0], dpo[METRICS].iloc[-1], check_names=False)


def test_turning_it_on_for_a_finished_run_trains_the_models_again_alone_to_the_same_weights(traced):
    root, before = traced
    # samples, pairs and evaluations are kept (their keys did not change); every model was trained again ...
    assert before["data"] == {p: (root / p).stat().st_mtime_ns for p in before["data"]}
    assert all((root / p).stat().st_mtime_ns != t for p, t in before["trained"].items())
    # ... to the same weights: the points leave the training's course as it was.
    for model, weights in before["weights"].items():
        assert (root / "models" / model / "model.safetensors").read_bytes() == weights, model


def test_the_report_draws_reward_against_kl_along_training(traced):
    root, _ = traced
    figure = root / "plots" / "frontier-trajectories.png"
    assert figure.read_bytes().startswith(b"\x89PNG") and figure.stat().st_size > 10_000
    assert "(plots/frontier-trajectories.png)" in (root / "report.md").read_text()


def test_every_above_a_trainings_steps_gives_its_first_and_last_point(tiny_dir, tmp_path, cli):
    """A config shrunk below its `every` (here 5 steps of 40 pairs) still trains: the curve is the
    start and the end."""
    root = tmp_path / "run"
    overrides = ["pairs.strategies=[random]", "train.losses=[sigmoid]", "pairs.count=40"]
    cli("train", "tiny", *sets(f"run_dir={root}", *overrides, "evaluate.during_training={every: 26, samples: 10}"))
    assert trajectory(root, "random-sigmoid-beta0.1-default").step.tolist() == [0, 5]


def test_a_training_killed_after_a_checkpoint_resumes_with_one_row_per_point(tiny_dir, tmp_path, cli):
    root, copy = tmp_path / "run", tmp_path / "copy"
    base = ["pairs.strategies=[random]", "train.losses=[sigmoid]"]
    cli("pairs", "tiny", *sets(f"run_dir={root}", *base))
    steps = ["train.checkpoint_steps=10", "evaluate.during_training={every: 5, samples: 40}"]
    train = ["train", "tiny", *sets(*base, *steps)]
    checkpoints = root / "models" / f".{DPO}.checkpoints"
    kill_after_a_checkpoint([*train, *sets(f"run_dir={root}")], checkpoints)
    assert not (root / "models" / DPO / "train.json").exists()
    step = max(int(p.parent.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*/trainer_state.json"))
    csv = root / "eval" / DPO / "trajectory.csv"
    written = pd.read_csv(csv)
    kept = written[written.step <= step].reset_index(drop=True)
    assert list(kept.step) == list(range(0, step + 1, 5))
    # A row written after the checkpoint (made here when the kill came first): made again on resume.
    later = pd.DataFrame([{**written.iloc[-1].to_dict(), "step": step + 5, "reward_mean": 999.0}])
    pd.concat([kept, later]).to_csv(csv, index=False)
    kept_texts = pd.read_parquet(root / "eval" / DPO / "trajectory-texts.parquet")
    kept_texts = kept_texts[kept_texts.step <= step].reset_index(drop=True)
    shutil.copytree(root, copy)
    cli(*train, *sets(f"run_dir={root}"))
    assert json.loads((root / "models" / DPO / "train.json").read_text())["resumed_from"] == f"checkpoint-{step}"
    rows = trajectory(root, DPO)
    assert list(rows.step) == [0, 5, 10, 15, 20, 25] and 999.0 not in set(rows.reward_mean)
    pd.testing.assert_frame_equal(rows[rows.step <= step].reset_index(drop=True), kept)
    # The points' texts likewise: those up to the checkpoint kept, one set of 40 per point.
    texts = pd.read_parquet(root / "eval" / DPO / "trajectory-texts.parquet")
    assert texts.groupby("step").size().to_dict() == dict.fromkeys(rows.step, 40)
    pd.testing.assert_frame_equal(texts[texts.step <= step].reset_index(drop=True), kept_texts)
    # The same checkpoint without its trajectory: not resumed from, the training starts afresh.
    (copy / "eval" / DPO / "trajectory.json").unlink()
    out = cli(*train, *sets(f"run_dir={copy}")).stdout
    assert f"not resuming from checkpoint-{step}" in out
    assert json.loads((copy / "models" / DPO / "train.json").read_text())["resumed_from"] is None
    assert list(trajectory(copy, DPO).step) == [0, 5, 10, 15, 20, 25]


def test_lora_trained_by_two_processes_together_samples_with_its_adapters(tiny_dir, tmp_path):
    root = tmp_path / "run"
    overrides = [
        f"run_dir={root}",
        "pairs.strategies=[margin]",
        "train.losses=[sigmoid]",
        "train.parallel=data",
        "train.lora={r: 4, alpha: 8, target_modules: [c_attn]}",
        TRACED,
    ]
    prefalign("train", "tiny", *sets(*overrides), "--num-processes", "2")
    name = "margin-sigmoid-beta0.1-default"
    assert json.loads((root / "models" / name / "train.json").read_text())["world_size"] == 2
    rows = trajectory(root, name)
    assert list(rows.step) == [0, 10, 20, 25]
    # Only the adapters train: a KL after step 0 (~0.06 nats here; without them |KL| < 1e-6, rounding) is theirs.
    assert rows.kl_seq.iloc[0] == 0 and (rows.kl_seq.iloc[1:] > 0.01).all()


# ---- the plan ----------------------------------------------------------------------------------

ORIGINAL = Original("gpt2-imdb", None, "hub:gpt2-imdb@main")
REWARD = RewardModel("distilbert-imdb", None, "POSITIVE", "hub:distilbert-imdb@main")


def test_the_setting_adds_a_marker_to_trained_models_and_changes_no_key():
    overrides = ["iterative.rounds=2", "online.kl_coefs=[0.1]"]
    off = plan(load_config("tiny", overrides), ORIGINAL, REWARD)
    on = plan(load_config("tiny", [*overrides, TRACED]), ORIGINAL, REWARD)
    assert [i.key for i in off if i.name != "report"] == [i.key for i in on if i.name != "report"]
    trained = [i for i in on if isinstance(i, (DpoModel, RlooModel))]
    assert len(trained) == 8
    for item in trained:
        (model, trajectory) = item.markers()
        assert model == (item.path / "train.json", item.key)
        assert trajectory[0] == item.path.parent.parent / "eval" / item.name / "trajectory.json"
    # Other settings: other trajectory keys (a model with the old trajectory is not current).
    other = plan(
        load_config("tiny", [*overrides, "evaluate.during_training={every: 5, samples: 40}"]), ORIGINAL, REWARD
    )
    other_keys = {i.markers()[1][1] for i in other if isinstance(i, (DpoModel, RlooModel))}
    assert len(other_keys) == 8 and other_keys.isdisjoint(i.markers()[1][1] for i in trained)


def test_the_figure_draws_each_curve_to_its_final_point_and_best_of_n_dashed(monkeypatch, tmp_path):
    from prefalign.report import trajectories

    drawn = {}
    monkeypatch.setattr(trajectories, "save_figure", lambda fig, out: drawn.update(fig=fig, out=out))
    points = pd.DataFrame({"kl_seq": [0.0, 0.5, 2.0, 2.0, 3.0], "reward_mean": [0.1, 0.8, 1.2, 1.2, 1.5]})
    chain = trajectories.Curve("iter-x (rounds 1-2)", points, (3,), (3.2, 1.4))
    rloo = trajectories.Curve("rloo-kl0.1", points.iloc[:2], (), None)
    summary = pd.DataFrame(
        {
            "model": ["original", "best-of-4", "best-of-2"],
            "method": ["original", "best_of_n", "best_of_n"],
            "reward_mean": [0.2, 1.0, 0.7],
            "kl_seq": [0.0, 0.636, 0.193],
        }
    )
    trajectories.plot_trajectories([chain, rloo], summary, tmp_path / "t.png")
    ax = drawn["fig"].axes[0]
    legend = {text.get_text() for text in ax.get_legend().get_texts()}
    assert legend == {"iter-x (rounds 1-2)", "rloo-kl0.1", "original", "best-of-N"}
    (best_of_n,) = [line for line in ax.get_lines() if line.get_label() == "best-of-N"]
    assert best_of_n.get_linestyle() == "--" and list(best_of_n.get_xdata()) == [0.193, 0.636]  # in KL order
    (line,) = [line for line in ax.get_lines() if line.get_label() == "iter-x (rounds 1-2)"]
    assert list(line.get_xdata()) == [0.0, 0.5, 2.0, 2.0, 3.0, 3.2]  # ends at the final evaluation
    assert ax.get_xscale() == "symlog"


def test_the_kl_axis_is_linear_below_the_smallest_positive_kl():
    from prefalign.report.trajectories import linear_below

    assert linear_below([0.0, 0.034, 5.0]) == 0.01
    assert linear_below([0.0, 1e-6]) == 1e-3 and linear_below([0.0, 7.0]) == 1.0 and linear_below([0.0]) == 1.0
