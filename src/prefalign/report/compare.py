"""`prefalign compare RUN_DIR RUN_DIR ... [--out DIR]`: finished runs side by side.

Reads each run directory's results.csv (what its report was made from), names each model
`<run>/<model>` (the run: the directory's name), and writes to `--out` one table of every model
(mean and std across its evaluation runs, or across training seeds for a model trained with several) and the frontier plots (reward against diversity, and
against KL when every run measured it) on shared axes, coloured by run and method, as compare.md and a self-contained
compare.html. Runs evaluated with other classifiers or sample counts are compared as they are:
the table says which classifier and how many runs each used.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from prefalign.errors import PrefalignError
from prefalign.pipeline.store import write_text
from prefalign.report.html import render
from prefalign.report.markdown import table
from prefalign.report.plots import method_of, plot_frontier
from prefalign.report.tables import across_seeds, summarize


class CompareError(PrefalignError):
    """A run directory that cannot be compared (no results.csv, or one that cannot be read)."""

    exit_code = 2


def read_run(root: Path) -> tuple[str, pd.DataFrame, dict]:
    """(run name, its results.csv with models renamed `<run>/<model>`, its config.yaml as a dict)."""
    results_file = root / "results.csv"
    if not results_file.is_file():
        raise CompareError(
            f"{root} has no results.csv: give a run directory whose report was written "
            f"(`prefalign report CONFIG` there first)"
        )
    try:
        results = pd.read_csv(results_file)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise CompareError(f"{results_file} cannot be read as a results table ({e})") from None
    missing = {"model", "method", "reward_mean", "diversity"} - set(results.columns)
    if missing:
        raise CompareError(f"{results_file} lacks the columns {sorted(missing)}: it is not a prefalign results.csv")
    config_file = root / "config.yaml"
    try:
        config = (yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}) if config_file.is_file() else {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise CompareError(
            f"{config_file} cannot be read as YAML ({str(e).splitlines()[0]}): it is the run's "
            "config as prefalign wrote it; restore or delete it"
        ) from None
    if not isinstance(config, dict):
        raise CompareError(f"{config_file} is not a mapping of config sections: restore or delete it")
    name = root.resolve().name
    for column in ("model", "group"):
        if column in results.columns:  # the group: repeats of one model over training seeds
            results[column] = name + "/" + results[column].astype(str)
    return name, results, config


def compare(run_dirs: list[Path], out: Path) -> Path:
    """Write compare.md, compare.html and the plots for `run_dirs` into `out`; returns compare.md's path."""
    if out.exists() and not out.is_dir():
        raise CompareError(f"--out {out} is a file, not a directory: give a directory (it is made if missing)")
    runs = [read_run(Path(d)) for d in run_dirs]
    names = [name for name, _, _ in runs]
    if len(set(names)) < len(names):
        raise CompareError(
            f"two run directories share a name ({', '.join(names)}): models are named <run>/<model>, "
            "so give directories with different names"
        )
    kl = all("kl_seq" in results.columns for _, results, _ in runs)
    summary = across_seeds(summarize(pd.concat([results for _, results, _ in runs], ignore_index=True)))
    md = [f"# prefalign comparison of {len(runs)} runs", "", "| run | classifier | evaluation |", "|---|---|---|"]
    classifiers = set()
    for name, results, config in runs:
        reward, evaluate = config.get("reward", {}), config.get("evaluate", {})
        classifiers.add(tuple(str(reward.get(k)) for k in ("model", "revision", "positive_label", "single_logit")))
        count = evaluate.get("runs", results["run"].nunique() if "run" in results else "?")
        md.append(
            f"| {name} | `{reward.get('model', '?')}` ({reward.get('positive_label', '?')}) | "
            f"{count} run{'' if count == 1 else 's'} x {evaluate.get('samples', '?')} samples |"
        )
    if len(classifiers) > 1:
        md += [
            "",
            "**The runs score with different classifiers (or classes), so their rewards and positive rates are "
            "not on one scale**: compare those within a run; diversity and KL compare across runs.",
        ]
    md += [
        "",
        "Cells: mean (std across evaluation runs; for a model trained with several training seeds, the mean "
        "over the seeds and the std across them).",
        "",
        table(summary, lambda r: r.model),
        "",
        "## Frontier",
        "",
    ]
    plots = [("diversity", "diversity (unigram entropy, nats)", False)]
    plots += [("kl_seq", "KL(policy || original), nats per text (symlog scale)", True)] if kl else []
    for x, xlabel, log_x in plots:
        png = Path("plots") / f"compare-reward-vs-{x.split('_')[0]}.png"
        plot_frontier(
            summary, x, out / png, xlabel, log_x, colour_by=lambda r: f"{r.model.split('/')[0]}: {method_of(r)}"
        )
        md += [f"![reward vs {x}]({png.as_posix()})", ""]
    text = "\n".join(md)
    write_text(out / "compare.md", text)
    write_text(
        out / "compare.html",
        render(text, out, {"runs": [str(Path(d).resolve()) for d in run_dirs]}, "n/a", "prefalign comparison"),
    )
    return out / "compare.md"
