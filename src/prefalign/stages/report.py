"""The `report` stage: read the evaluation runs, summarise them, draw the figures, write the report.

Writes `results.csv` (one row per model x evaluation run, every metric), `summary.csv` (one row per
model group: a model's repeats over training seeds, `train.repeats`), the plots under `plots/`,
`report.md` and the same as one self-contained page, `report.html`, with the config and versions.
What the report says is built as data first (report/tables.py, report/comparison.py,
report/sections.py), then drawn (report/plots.py) and rendered (report/markdown.py, report/html.py);
this module only reads the inputs and writes the outputs. Run with:

    prefalign report CONFIG
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from prefalign.pipeline.evidence_items import BestOfN, TextScores
from prefalign.pipeline.items import DpoModel, Original, Report
from prefalign.pipeline.services import Services, model_info
from prefalign.pipeline.store import atomic_path, read_json, read_parquet, write_json, write_text
from prefalign.report.html import render
from prefalign.report.markdown import render_markdown
from prefalign.report.plots import draw_figures
from prefalign.report.sections import Inputs, build_report, pair_files
from prefalign.report.tables import across_seeds, results_table, summarize
from prefalign.stages.best_of_n import best_of_n_results
from prefalign.stages.evaluate import run_results
from prefalign.stages.judge import stored_scores


def run_rewards(evaluation) -> np.ndarray:
    """Every reward of every run of one evaluation."""
    runs = [evaluation.run_path(k, ".parquet") for k in range(evaluation.runs)]
    return np.concatenate([read_parquet(f, columns=["reward"])["reward"].to_numpy() for f in runs])


def read_inputs(item: Report, summary: pd.DataFrame) -> Inputs:
    """What the report shows besides the metrics: models.json, the samples' and pairs' metadata,
    the rewards of the original and the grid, every train.json, and run 0 of each model group shown."""
    evaluations, pairs = item.evaluations, pair_files(item)
    shown = set(summary.model)
    return Inputs(
        generated=time.strftime("%Y-%m-%d %H:%M"),
        models=model_info(item.config),
        samples_meta=read_json(pairs[0].samples.meta) or {},  # the main samples every grid pair file draws from
        pairs_meta={p.strategy: read_json(p.meta) or {} for p in pairs},
        rewards={e.model.name: run_rewards(e) for e in evaluations if type(e.model) in (Original, DpoModel)},
        train_info={
            e.model.name: read_json(e.model.path / "train.json") or {}
            for e in evaluations
            if not isinstance(e.model, Original)
        },
        examples={
            **{e.model.name: read_parquet(e.run_path(0, ".parquet")) for e in evaluations if e.model.name in shown},
            **best_of_n_examples(item, shown),
        },
    )


def best_of_n_examples(item: Report, shown: set[str]) -> dict[str, pd.DataFrame]:
    """Run 0's chosen texts of every best-of-N policy shown."""
    out = {}
    for best in (x for x in item.evidence if isinstance(x, BestOfN)):
        table = read_parquet(best.run_path(0, "-choices.parquet"))
        out.update({best.model_name(n): table[table.n == n] for n in best.ladder if best.model_name(n) in shown})
    return out


def model_runs(item: Report) -> list[tuple[dict, list[dict]]]:
    """(a model's describing columns, the metrics of each of its runs) of every evaluated model and
    best-of-N policy, each run's judge and fluency metrics beside its own."""
    scores: dict[int, list[list[dict]]] = {}  # id(source) -> that source's TextScores, run by run
    for x in item.evidence:
        if isinstance(x, TextScores):
            scores.setdefault(id(x.source), []).append(stored_scores(x))
    out = []
    for e in item.evaluations:
        runs = run_results(e)
        for scored in scores.get(id(e), []):
            runs = [{**run, **extra} for run, extra in zip(runs, scored, strict=True)]
        out.append((e.model.row(), runs))
    for best in (x for x in item.evidence if isinstance(x, BestOfN)):
        for row, runs in best_of_n_results(best):
            for scored in scores.get(id(best), []):
                runs = [{**run, **extra[str(row["best_of"])]} for run, extra in zip(runs, scored, strict=True)]
            out.append((row, runs))
    return out


def write_csv(table: pd.DataFrame, path) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def write_report(item: Report, services: Services) -> None:
    """The `report` stage: results.csv, summary.csv, the plots, report.md and report.html, then report.meta.json."""
    root, cfg = item.path.parent, item.config
    results = results_table(model_runs(item))
    write_csv(results, root / "results.csv")
    summary = across_seeds(summarize(results))  # what the tables, plots and checks show: one row per model group
    write_csv(summary, root / "summary.csv")
    content = build_report(item, summary, read_inputs(item, summary))
    draw_figures(content.figures(), root)
    markdown = render_markdown(content)
    write_text(item.path, markdown)
    write_text(root / "report.html", render(markdown, root, cfg.model_dump(), str(services.device), content.title))
    write_json(item.meta, {"key": item.key})
    services.log(f"report: {item.path}")
