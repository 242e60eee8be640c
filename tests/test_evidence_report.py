"""The report's place for each model against the best-of-N curve, on hand-made summaries."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from prefalign.pipeline.evidence_items import best_of_n_kl
from prefalign.report.comparison import baseline_and_challengers
from prefalign.report.evidence import curve_at, evidence_section, versus_best_of_n
from prefalign.report.tables import best_of_n_curve


def summary() -> pd.DataFrame:
    rows = [
        {"model": "original", "method": "original", "best_of": math.nan, "reward_mean": 0.4, "kl_seq": 0.0},
        *(
            {"model": f"best-of-{n}", "method": "best_of_n", "best_of": n, "reward_mean": r, "kl_seq": best_of_n_kl(n)}
            for n, r in ((2, 1.0), (4, 1.5), (8, 1.9))
        ),
        # far right and below the curve's top: beaten by best-of-4 (1.5 >= 1.2 at KL 0.64 <= 50)
        {"model": "salad", "method": "dpo", "best_of": math.nan, "reward_mean": 1.2, "kl_seq": 50.0},
        # at KL 0.3, between best-of-2 (0.19) and best-of-4 (0.64), and above both
        {"model": "gentle", "method": "rloo", "best_of": math.nan, "reward_mean": 1.6, "kl_seq": 0.3},
        # at KL 0.4, below the curve there but above best-of-2
        {"model": "meh", "method": "iterative", "best_of": math.nan, "reward_mean": 1.1, "kl_seq": 0.4},
        # a biased KL estimate below 0 (top-k / top-p samples): placed nowhere
        {"model": "negative", "method": "dpo", "best_of": math.nan, "reward_mean": 0.9, "kl_seq": -0.45},
    ]
    out = pd.DataFrame(rows)
    out["reward_mean_sd"] = 0.01
    return out


def test_the_curve_starts_at_the_original_and_interpolates_in_log_kl():
    curve = best_of_n_curve(summary())
    assert curve.model.tolist() == ["original", "best-of-2", "best-of-4", "best-of-8"]
    assert curve_at(curve, 0.0) == pytest.approx(0.4)
    assert curve_at(curve, best_of_n_kl(4)) == pytest.approx(1.5)
    middle = math.expm1((math.log1p(best_of_n_kl(2)) + math.log1p(best_of_n_kl(4))) / 2)
    assert curve_at(curve, middle) == pytest.approx(1.25)
    assert curve_at(curve, 1e6) == pytest.approx(1.9)  # beyond the ladder: its top


def test_each_trained_model_is_placed_against_the_curve():
    placed = versus_best_of_n(summary()).set_index("model")
    assert list(placed.index) == ["salad", "gentle", "meh", "negative"]  # trained models only
    assert placed.loc["salad", "beaten_by"] == "best-of-4" and not placed.loc["salad", "above"]
    assert placed.loc["salad", "margin"] == pytest.approx(1.2 - 1.9)
    assert placed.loc["gentle", "above"] and placed.loc["gentle", "beaten_by"] == ""
    assert not placed.loc["meh", "above"] and placed.loc["meh", "beaten_by"] == ""  # nothing at KL <= 0.4 scores 1.1
    assert placed.loc["negative", "above"] is None and placed.loc["negative", "beaten_by"] == ""
    assert versus_best_of_n(summary().drop(columns="kl_seq")).empty
    assert versus_best_of_n(summary()[summary().method != "best_of_n"]).empty


def test_best_of_n_rows_are_references_not_challengers():
    base, challengers = baseline_and_challengers(summary(), "dpo")
    assert base.model.tolist() == ["salad", "negative"] and "best-of-2" not in challengers.model.tolist()


def test_the_evidence_section_needs_some_evidence():
    plain = summary()[~summary().method.isin(["best_of_n"])]
    assert evidence_section(plain) is None
    section = evidence_section(summary())
    assert len(section.ladder) == 3 and section.figures == ()  # no judge or fluency: no judges figure
