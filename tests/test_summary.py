"""The report's numbers: per-model summaries, the summary across training seeds, who beats whom,
the comparison with `report.baseline`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from prefalign.report.comparison import (
    beaten_by,
    beats_baseline,
    closest_to_baseline,
    compare_to_baseline,
    net_leads,
)
from prefalign.report.tables import across_seeds, summarize


def results(rows):
    """results.csv rows: (model, group, recipe, training_seed, [(reward, diversity, kl) per run])."""
    return pd.DataFrame(
        [
            {
                "model": m,
                "group": g,
                "method": "original" if m == "original" else "dpo",
                "strategy": "random",
                "loss": "sigmoid",
                "beta": 0.1,
                "recipe": recipe,
                "round": None,
                "kl_coef": None,
                "training_seed": seed,
                "run": k,
                "reward_mean": r,
                "diversity": d,
                "kl_seq": kl,
            }
            for m, g, recipe, seed, runs in rows
            for k, (r, d, kl) in enumerate(runs)
        ]
    )


ROWS = [
    ("original", "original", "", None, [(0.5, 6.0, 0.0), (0.52, 6.02, 0.0)]),
    ("a", "a", "seed", 0, [(2.0, 4.0, 50.0), (2.2, 4.2, 52.0)]),
    ("a-seed1", "a", "seed", 1, [(2.6, 4.4, 60.0), (2.8, 4.6, 62.0)]),
    ("b", "b", "default", 0, [(3.0, 5.0, 10.0), (3.02, 5.02, 10.2)]),
    ("b-seed1", "b", "default", 1, [(3.1, 5.1, 11.0), (3.12, 5.12, 11.2)]),
]


def test_across_seeds_gives_the_mean_and_std_across_training_seeds():
    per_model = summarize(results(ROWS))
    assert list(per_model.model) == ["original", "a", "a-seed1", "b", "b-seed1"]
    summary = across_seeds(per_model).set_index("model")
    assert list(summary.index) == ["original", "a", "b"]
    a = summary.loc["a"]
    assert a.seeds == 2 and a.runs == 4 and np.isnan(a.training_seed)
    assert a.reward_mean == pytest.approx(np.mean([2.1, 2.7]))
    assert a.reward_mean_sd == pytest.approx(np.std([2.1, 2.7], ddof=1))  # across seeds, not runs
    assert a.reward_mean_run_sd == pytest.approx(np.std([2.0, 2.2], ddof=1))  # both seeds' run std is 0.141
    original = summary.loc["original"]  # trained once: its row as it was, std across runs
    assert original.seeds == 1 and original.reward_mean_sd == pytest.approx(np.std([0.5, 0.52], ddof=1))
    assert original.reward_mean_run_sd == pytest.approx(original.reward_mean_sd)


def test_who_beats_whom_uses_the_std_across_seeds():
    summary = across_seeds(summarize(results(ROWS)))
    # b beats a on all three by more than the seed std; nothing beats the original's diversity
    assert beaten_by(summary) == {"b": ["a"]}
    assert list(beats_baseline(summary, "seed").model) == ["b"]
    # the seeds of a spread over 0.6 reward: a model 0.4 above a's mean no longer clears it
    close = ROWS[:3] + [("c", "c", "default", 0, [(2.8, 5.0, 10.0), (2.8, 5.0, 10.0)])]
    assert beats_baseline(across_seeds(summarize(results(close))), "seed").empty
    # judged on the first seed alone (run stds), c would beat the seed recipe
    assert beaten_by(summarize(results(close)))["c"] == ["a"]


def test_a_model_with_broken_texts_beats_nothing_but_can_be_beaten():
    frame = results(ROWS)
    frame["broken_share"] = 0.0
    frame.loc[frame.group == "b", "broken_share"] = 0.2  # b's numbers win, but a fifth of its texts are byte garbage
    summary = across_seeds(summarize(frame))
    assert summary.set_index("model").loc["b", "broken_share"] == pytest.approx(0.2)
    assert beaten_by(summary) == {} and beats_baseline(summary, "seed").empty
    frame.loc[frame.group == "b", "broken_share"] = 0.01  # a few broken texts: still text
    assert beaten_by(across_seeds(summarize(frame))) == {"b": ["a"]}
    swapped = frame.copy()
    swapped["broken_share"] = np.where(swapped.group == "a", 0.5, 0.0)
    assert beaten_by(across_seeds(summarize(swapped))) == {"b": ["a"]}  # an unreadable model is beaten as before


def test_the_closest_challenger_and_its_net_leads():
    # c beats a on diversity and KL by far, but its reward (2.8) is 0.4 above a's mean, inside a's seed std (0.42)
    close = ROWS[:3] + [
        ("c", "c", "default", 0, [(2.8, 5.0, 10.0), (2.8, 5.0, 10.0)]),
        ("d", "d", "default", 0, [(1.0, 5.0, 10.0), (1.0, 5.0, 10.0)]),
    ]
    summary = across_seeds(summarize(results(close))).set_index("model", drop=False)
    a, c = summary.loc["a"], summary.loc["c"]
    sd = np.std([2.1, 2.7], ddof=1)
    assert net_leads(c, a) == pytest.approx(
        {
            "reward": 2.8 - 2.4 - sd,
            "diversity": 5.0 - 4.3 - np.std([4.1, 4.5], ddof=1),
            "KL": 56.0 - 10.0 - np.std([51.0, 61.0], ddof=1),
        }
    )
    row, wins, worst = closest_to_baseline(summary.reset_index(drop=True), "seed")
    assert (row.model, wins) == ("c", 0)  # d is further short on reward
    assert worst["reward"] == (pytest.approx(2.8 - 2.4 - sd), "a") and worst["KL"][0] > 0
    # no challenger, or no seed model: nothing to say
    assert closest_to_baseline(across_seeds(summarize(results(ROWS[:3]))), "seed") is None


def test_the_baseline_is_a_recipe_or_a_method_named_in_the_config():
    frame = results(ROWS)
    summary = across_seeds(summarize(frame))
    seed = compare_to_baseline(summary, "seed")  # what the aligned, headroom and frontier presets ask
    assert (seed.baseline, seed.is_recipe, seed.models, seed.better, seed.closest) == ("seed", True, 1, ["b"], None)
    default = compare_to_baseline(summary, "default")  # a seeds' model beats no `default` one: the closest is named
    assert default.better == [] and (default.closest.model, default.closest.wins) == ("a", 0)
    assert compare_to_baseline(summary, None) is None  # empty: no comparison
    assert compare_to_baseline(summary, "rloo") is None  # no such models in the run: none either
    frame.loc[frame.group == "b", "method"] = "rloo"
    summary = across_seeds(summarize(frame))
    by_method = compare_to_baseline(summary, "dpo")  # every DPO model against the other methods' models
    assert (by_method.is_recipe, by_method.models, by_method.better) == (False, 1, ["b"])
    assert compare_to_baseline(summary, "rloo").closest.model == "a"


def test_the_comparison_reads_as_before_and_names_its_baseline():
    from prefalign.report.markdown import comparison

    summary = across_seeds(summarize(results(ROWS)))
    spread = "the std across training seeds"
    assert comparison(compare_to_baseline(summary, "seed"), spread) == [
        "Models beating every `seed`-recipe model on reward and diversity at once, with lower KL, each by more "
        "than the std across training seeds: `b`.",
        "",
    ]
    lines = comparison(compare_to_baseline(summary, "default"), spread)
    assert lines[0].startswith("Models beating every `default`-recipe model") and lines[0].endswith(": none.")
    assert lines[2].startswith("Closest: `a`, which beats 0 of the 1. Its smallest lead over them on each axis")
