"""The report's tables as data: results.csv, summary.csv and the rows each section shows.

Knows the columns of the results (a model's describing columns, RESULT_COLUMNS, then `run`, then
one column per metric), how evaluation runs are summarised per model (mean and std across runs)
and per model group (a model's repeats over training seeds, `train.repeats`: mean and std across
the seeds), which models' texts count as text (`readable`), and which models are Pareto-optimal.
Pure: DataFrames in, DataFrames out; nothing here reads or writes a file.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from prefalign.engine.metrics import pareto_mask
from prefalign.pipeline.items import RESULT_COLUMNS

# Above this share of texts with undecodable bytes (metrics.broken_share) a model's diversity is
# garbage's, not text's: it takes no part in the Pareto front or in who beats whom.
UNREADABLE_SHARE = 0.05
BEST_OF_N = "best_of_n"  # results.csv's method of a best-of-N policy (pipeline/evidence_items.BestOfN)


def readable(row) -> bool:
    """Whether a summary row's texts count as text (an evaluation without broken_share counts)."""
    share = row.get("broken_share", 0.0)
    return not (share > UNREADABLE_SHARE)


def metric_columns(results: pd.DataFrame) -> list[str]:
    return [c for c in results.columns if c not in (*RESULT_COLUMNS, "run")]


def results_table(runs: Iterable[tuple[dict, list[dict]]]) -> pd.DataFrame:
    """results.csv: one row per model and evaluation run, from (a model's describing columns, the
    metrics of each of its runs) pairs: the model's description, the run index, every metric."""
    return pd.DataFrame(
        [{**row, "run": k, **metrics} for row, model_runs in runs for k, metrics in enumerate(model_runs)]
    )


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and std (`<metric>_sd`) across runs of every metric, one row per model, run order kept."""
    metrics = metric_columns(results)
    by_model = results.groupby("model", sort=False)
    described = [c for c in RESULT_COLUMNS[1:] if c in results.columns]  # a results.csv of an older version lacks some
    out = (
        by_model[described]
        .first()
        .join(by_model[metrics].mean())
        .join(by_model[metrics].std(ddof=1).add_suffix("_sd"))
        .reset_index()
    )
    out["runs"] = by_model.size().to_numpy()
    return out


def across_seeds(summary: pd.DataFrame) -> pd.DataFrame:
    """summary.csv: one row per model group (a model's repeats over training seeds, train.repeats),
    named by the group: each metric's mean over the seeds' run means, `<metric>_sd` the std across
    training seeds and `<metric>_run_sd` the std across evaluation runs (pooled over the seeds);
    `seeds`: how many. A model trained once keeps its row, with `_sd` = `_run_sd` = the std across its runs."""
    metrics = [c for c in summary.columns if f"{c}_sd" in summary.columns]
    groups = summary["group"] if "group" in summary.columns else summary["model"]
    rows = []
    for group, repeats in summary.groupby(groups, sort=False):
        row = repeats.iloc[0].copy()
        row["model"], row["seeds"], row["runs"] = group, len(repeats), repeats["runs"].sum()
        for m in metrics:
            row[f"{m}_run_sd"] = float(np.sqrt(np.mean(np.square(repeats[f"{m}_sd"]))))
            if len(repeats) > 1:
                row[m], row[f"{m}_sd"] = repeats[m].mean(), repeats[m].std(ddof=1)
        if len(repeats) > 1 and "training_seed" in row:
            row["training_seed"] = np.nan  # several
        rows.append(row)
    return pd.DataFrame(rows).reset_index(drop=True)


def strategy_rows(summary: pd.DataFrame, strategy: str) -> pd.DataFrame:
    """The rows of one pair strategy's table: the original model, then the DPO grid on its pairs."""
    return pd.concat(
        [summary[summary.method == "original"], summary[(summary.method == "dpo") & (summary.strategy == strategy)]]
    )


def pareto_front(summary: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """(the Pareto-optimal readable rows on run means: no other has higher-or-equal reward and
    diversity, and lower-or-equal KL when measured, better in one; the models left out as unreadable)."""
    is_readable = np.array([readable(r) for _, r in summary.iterrows()], dtype=bool)
    candidates, unreadable = summary[is_readable], list(summary.model[~is_readable])
    mins = candidates[["kl_seq"]].to_numpy() if "kl_seq" in summary.columns else None
    return candidates[pareto_mask(candidates[["reward_mean", "diversity"]].to_numpy(), mins)], unreadable


def best_of_n_curve(summary: pd.DataFrame) -> pd.DataFrame:
    """The best-of-N rows by N, with the original as N = 1 (KL 0) when the ladder has no N = 1."""
    if "best_of" not in summary.columns:
        return summary.iloc[:0]
    best = summary[summary.method == BEST_OF_N].sort_values("best_of")
    if len(best) and 1 not in set(best.best_of):
        best = pd.concat([summary[summary.method == "original"].assign(best_of=1), best])
    return best.reset_index(drop=True)
