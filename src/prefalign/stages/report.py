"""Tables from the evaluation runs, and the report around them: the `report` stage.

Writes `results.csv` (one row per model x evaluation run, every metric), `summary.csv` (one row
per model group: a model's repeats over training seeds, `train.repeats`), `report.md` (and the
same as one self-contained page, `report.html`, with the config and versions; report_html.py) with:
per pair strategy, the original experiment's table shape (the original model, then loss x beta;
cells are mean (std across runs, or across training seeds when there are several)), the reward
distributions and the training curves (report_plots.py); a table of iterative rounds and online
models with their training curves; the frontier: reward against KL and reward against diversity,
one point per model group with one-std error bars, and the Pareto-optimal groups (on means); which
groups beat which (higher reward and diversity, lower KL, each by more than the std), and, when the
run has `seed`-recipe models, which groups beat every one of them. Unigram diversity also rises for
garbage, so a model with more than UNREADABLE_SHARE of texts holding undecodable bytes (the
`broken_share` metric) is shown but never counted as Pareto-optimal or as beating another. Model cards are written beside
each trained model. Run with:

    prefalign report CONFIG
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from prefalign.engine.metrics import pareto_mask
from prefalign.pipeline.items import RESULT_COLUMNS, TRAINED, DpoModel, IterativeRound, Original, Report, RlooModel
from prefalign.pipeline.services import Services, model_info
from prefalign.pipeline.store import atomic_path, read_json, read_parquet, write_json, write_text
from prefalign.report.html import render
from prefalign.report.model_card import model_card
from prefalign.report.plots import (
    DPO_CURVES,
    RLOO_CURVES,
    curve_limits,
    plot_frontier,
    plot_rewards,
    plot_training,
    reward_span,
)
from prefalign.stages.evaluate import run_results

# Above this share of texts with undecodable bytes (metrics.broken_share) a model's diversity is
# garbage's, not text's: it takes no part in the Pareto front or in who beats whom.
UNREADABLE_SHARE = 0.05


def readable(row) -> bool:
    """Whether a summary row's texts count as text (an evaluation without broken_share counts)."""
    share = row.get("broken_share", 0.0)
    return not (share > UNREADABLE_SHARE)


def metric_columns(results: pd.DataFrame) -> list[str]:
    return [c for c in results.columns if c not in (*RESULT_COLUMNS, "run")]


def results_table(item: Report) -> pd.DataFrame:
    """One row per model and evaluation run: the model's description, the run index, every metric."""
    return pd.DataFrame(
        [
            {**evaluation.model.row(), "run": k, **metrics}
            for evaluation in item.evaluations
            for k, metrics in enumerate(run_results(evaluation))
        ]
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
    """One row per model group (a model's repeats over training seeds, train.repeats), named by the
    group: each metric's mean over the seeds' run means, `<metric>_sd` the std across training seeds
    and `<metric>_run_sd` the std across evaluation runs (pooled over the seeds); `seeds`: how many.
    A model trained once keeps its row, with `_sd` = `_run_sd` = the std across its runs."""
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


# The axes of "beats": (name, summary column, +1 where higher is better / -1 where lower is).
AXES = (("reward", "reward_mean", 1), ("diversity", "diversity", 1), ("KL", "kl_seq", -1))


def net_leads(r, s) -> dict[str, float]:
    """Summary row `r`'s lead over `s` on each axis (KL only when measured), net of the larger of the
    two rows' stds (across training seeds when they have several; a std that could not be measured,
    from a single run, counts as 0): positive = ahead by more than the noise."""
    return {
        name: sign * (r[col] - s[col]) - np.nanmax([r[f"{col}_sd"], s[f"{col}_sd"], 0.0])
        for name, col, sign in AXES
        if col in r.index
    }


def beats(r, s) -> bool:
    """Summary row `r` beats `s`: `r` is readable, and leads on reward and diversity (and KL, when
    measured), each by more than the larger of the two rows' stds (`net_leads` all positive)."""
    return readable(r) and all(lead > 0 for lead in net_leads(r, s).values())


def beaten_by(summary: pd.DataFrame) -> dict[str, list[str]]:
    """model -> the models it beats (see `beats`), for the models that beat any."""
    rows = [r for _, r in summary.iterrows()]
    table = {r.model: [s.model for s in rows if s.model != r.model and beats(r, s)] for r in rows}
    return {m: beaten for m, beaten in table.items() if beaten}


def seed_and_challengers(summary: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The `seed`-recipe DPO models (the original's settings) and their challengers (every other trained model)."""
    seed = summary[(summary.method == "dpo") & (summary.recipe == "seed")]
    return seed, summary[(summary.recipe != "seed") & (summary.method != "original")]


def smallest_leads(r, seed: pd.DataFrame) -> dict[str, tuple[float, str]]:
    """axis -> (row `r`'s smallest net lead over the rows of `seed` (see `net_leads`), the model it is against)."""
    leads = {s.model: net_leads(r, s) for _, s in seed.iterrows()}
    return {axis: min((lead[axis], model) for model, lead in leads.items()) for axis in next(iter(leads.values()))}


def beats_seed(summary: pd.DataFrame) -> pd.DataFrame:
    """Models that beat every `seed`-recipe DPO model on reward and diversity, with lower KL, each by
    more than the larger of the two models' stds."""
    seed, others = seed_and_challengers(summary)
    rows = [r for _, r in others.iterrows() if len(seed) and all(beats(r, s) for _, s in seed.iterrows())]
    return pd.DataFrame(rows)


def closest_to_seed(summary: pd.DataFrame) -> tuple[pd.Series, int, dict[str, tuple[float, str]]] | None:
    """The readable non-`seed` model that comes closest to beating every `seed`-recipe model: the one
    beating the most of them, then the one with the smallest shortfall (in units of the `seed` models'
    spread on each axis). Returns (its row, how many it beats, `smallest_leads` of it); None without
    `seed` models or challengers."""
    seed, challengers = seed_and_challengers(summary)
    others = [r for _, r in challengers.iterrows() if readable(r)]
    if seed.empty or not others:
        return None
    spread = {name: float(np.ptp(seed[col])) or 1.0 for name, col, _ in AXES if col in summary.columns}

    def standing(r):
        worst = smallest_leads(r, seed)
        shortfall = sum(min(lead, 0.0) / spread[axis] for axis, (lead, _) in worst.items())
        return sum(beats(r, s) for _, s in seed.iterrows()), shortfall, worst

    best, (wins, _, worst) = max(((r, standing(r)) for r in others), key=lambda pair: pair[1][:2])
    return best, wins, worst


def _cell(mean: float, sd: float) -> str:
    return f"{mean:.3f} ({sd:.3f})" if np.isfinite(sd) else f"{mean:.3f}"


def table(rows: pd.DataFrame, label) -> str:
    """Markdown table of the main metrics; `label(row)` names each line."""
    has_kl = "kl_seq" in rows.columns
    head = "| model | reward | diversity | distinct-2 | positive rate |" + (
        " KL (seq) | KL / token |" if has_kl else ""
    )
    lines = [head + " mean length | broken texts |", "|---" * (head.count("|") - 1 + 2) + "|"]
    for _, r in rows.iterrows():
        kl = f" {_cell(r.kl_seq, r.kl_seq_sd)} | {r.kl_token:.4f} |" if has_kl else ""
        broken = r.get("broken_share", float("nan"))  # absent from evaluations older than metrics-v3
        lines.append(
            f"| {label(r)} | {_cell(r.reward_mean, r.reward_mean_sd)} | {_cell(r.diversity, r.diversity_sd)} | "
            f"{r.distinct_2:.3f} | {_cell(r.positive_rate, r.positive_rate_sd)} |{kl} {r.mean_tokens:.1f} | "
            f"{f'{100 * broken:.1f}%' if np.isfinite(broken) else 'n/a'} |"
        )
    return "\n".join(lines)


def strategy_table(summary: pd.DataFrame, strategy: str) -> str:
    rows = pd.concat(
        [summary[summary.method == "original"], summary[(summary.method == "dpo") & (summary.strategy == strategy)]]
    )
    return table(rows, lambda r: "original model" if r.method == "original" else f"{r.loss} {r.beta:g} ({r.recipe})")


def run_rewards(evaluation) -> np.ndarray:
    """Every reward of every run of one evaluation."""
    runs = [evaluation.run_path(k, ".parquet") for k in range(evaluation.runs)]
    return np.concatenate([read_parquet(f, columns=["reward"])["reward"].to_numpy() for f in runs])


def settings_text(settings: dict) -> str:
    """Config settings as the YAML a user writes: `logging_steps: 5` (validation stores 5.0); empty ones left out."""

    def value(v):
        return int(v) if isinstance(v, float) and v.is_integer() and abs(v) < 1e15 else v

    return ", ".join(f"`{k}: {value(v)}`" for k, v in settings.items() if v is not None)


def write_report(item: Report, services: Services) -> None:
    """The `report` stage: results.csv, report.md and the plots, then report.meta.json."""
    results = results_table(item)
    root, cfg = item.path.parent, item.config
    with atomic_path(root / "results.csv") as tmp:
        results.to_csv(tmp, index=False)
    per_model = summarize(results)
    summary = across_seeds(per_model)  # what the tables, plots and checks show: one row per model group
    with atomic_path(root / "summary.csv") as tmp:
        summary.to_csv(tmp, index=False)
    models = model_info(cfg)
    repeats = cfg.train.repeats
    kl = "kl_seq" in summary.columns
    evaluation_of = {e.model.name: e for e in item.evaluations}
    grid = [e.model for e in item.evaluations if type(e.model) is DpoModel]
    pair_files = list({model.pairs.key: model.pairs for model in grid}.values())
    samples_meta = read_json(pair_files[0].samples.meta) or {}  # the main samples every grid pair file draws from

    md = [
        f"# prefalign report: {cfg.name}",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M')} from `{root}`. Rewards are the classifier's "
        + ("single logit" if cfg.reward.single_logit else f"`{cfg.reward.positive_label}` logit")
        + "; diversity is the entropy (nats) of the unigram distribution of "
        "policy token ids over each run's texts; distinct-2 is the share of distinct token bigrams; positive rate "
        "is the share of texts the classifier labels positive"
        + (
            "; KL is KL(policy || original) in nats per text (and per generated token), estimated on the run's "
            "own top-k / top-p samples from both models' full log-probs (biased; see metrics.kl_estimate)"
            if kl
            else ""
        )
        + (
            (
                f". Cells: one evaluation run of {cfg.evaluate.samples} samples (no std: set evaluate.runs above 1 for one)."
                if cfg.evaluate.runs == 1
                else f". Cells: mean (std across {cfg.evaluate.runs} runs of {cfg.evaluate.samples} samples)."
            )
            if repeats == 1
            else f". Every model was trained with {repeats} training seeds; cells: mean over the seeds (std across the "
            f"seeds), each seed's value the mean of {cfg.evaluate.runs} runs of {cfg.evaluate.samples} samples; the "
            "std across runs is in summary.csv (`*_run_sd`), each seed's numbers in results.csv."
        ),
        "",
        "## Models",
        "",
        f"- policy: `{models.get('policy', {}).get('ref', cfg.policy.model)}`"
        + (
            f" (held-out perplexity {models['policy']['perplexity']:.1f})"
            if "perplexity" in models.get("policy", {})
            else ""
        ),
        f"- reward model: `{models.get('reward_model', {}).get('ref', cfg.reward.model)}`"
        + (
            f" (held-out accuracy {models['reward_model']['accuracy']:.3f})"
            if "accuracy" in models.get("reward_model", {})
            else ""
        ),
        f"- training recipe: `{cfg.train.recipe}`"
        + (f", overrides {settings_text(cfg.train.dpo)}" if cfg.train.dpo else ""),
        f"- prompts: {'BOS token only' if cfg.sampling.prompts is None else settings_text(cfg.sampling.prompts.model_dump())}",
        f"- pair samples: {samples_meta.get('samples', '?')} texts, mean reward {samples_meta.get('reward_mean', float('nan')):.3f}",
        "",
    ]
    # Reward distributions by model group: the repeats of a model pooled.
    rewards = {"original": run_rewards(evaluation_of["original"])}
    for model in grid:
        rewards[model.group] = np.concatenate([rewards.get(model.group, []), run_rewards(evaluation_of[model.name])])
    span = reward_span(rewards.values())
    dpo_trained = [e.model for e in item.evaluations if isinstance(e.model, DpoModel)]  # iterative rounds included
    dpo_limits = curve_limits(dpo_trained, DPO_CURVES)  # every DPO training figure shares its y ranges
    for pairs in pair_files:
        strategy = pairs.strategy
        pmeta = read_json(pairs.meta) or {}
        rule = ", ".join(f"{k} {v}" for k, v in pairs.rule.items())
        png = Path("plots") / f"rewards-{strategy}.png"
        names = ["original"] + list(dict.fromkeys(model.group for model in grid if model.pairs is pairs))
        plot_rewards(
            {name: rewards[name] for name in names}, f"reward distributions, {strategy} pairs", root / png, span
        )
        curves = Path("plots") / f"training-{strategy}.png"
        plot_training(
            [model for model in grid if model.pairs is pairs],
            f"training, {strategy} pairs",
            root / curves,
            limits=dpo_limits,
        )
        md += [
            f"## Pairs: {strategy}" + (f" ({rule})" if rule else ""),
            "",
            f"{pmeta.get('pairs', '?')} pairs, mean reward gap {pmeta.get('mean_gap', float('nan')):.3f} "
            f"(chosen {pmeta.get('chosen_reward_mean', float('nan')):.3f} +- {pmeta.get('chosen_reward_std', float('nan')):.3f}, "
            f"rejected {pmeta.get('rejected_reward_mean', float('nan')):.3f}).",
            "",
            strategy_table(summary, strategy),
            "",
            f"![reward distributions, {strategy} pairs]({png.as_posix()})",
            "",
            f"![training curves, {strategy} pairs]({curves.as_posix()})",
            "",
        ]

    # Each iterative chain, round 1 (its grid model) first, then the RLOO models.
    labels = {"original": "original model"}
    labels.update(
        {
            model.group: f"{model.group} (round 1 of iter-{model.group})" if type(model) is DpoModel else model.group
            for chain in item.chains
            for model in chain
        }
    )
    labels.update({name: name for name in summary[summary.method == "rloo"].model})
    if len(labels) > 1:
        online = summary.set_index("model").loc[list(labels)].reset_index()
        md += [
            "## On-policy rounds and online RL",
            "",
            "Iterative DPO: each round samples from the previous round's model, scores, pairs and trains "
            f"(`{cfg.iterative.strategy}` pairs, reference fixed to the original); round 1 is the grid model with "
            "the chain's settings. RLOO: TRL's RLOOTrainer with the classifier's positive logit as reward, "
            f"{cfg.online.steps} steps.",
            "",
            table(online, lambda r: labels[r.model]),
            "",
        ]
        rounds = [e.model for e in item.evaluations if type(e.model) is IterativeRound]
        rloo = [e.model for e in item.evaluations if type(e.model) is RlooModel]
        for models, name, panels, limits in (
            (rounds, "iterative", DPO_CURVES, dpo_limits),
            (rloo, "rloo", RLOO_CURVES, None),
        ):
            if models:
                curves = Path("plots") / f"training-{name}.png"
                plot_training(models, f"training, {name}", root / curves, panels, limits)
                md += [f"![training curves, {name}]({curves.as_posix()})", ""]

    md += ["## Frontier", ""]
    plots = [("diversity", "diversity (unigram entropy, nats)", False)]
    plots += [("kl_seq", "KL(policy || original), nats per text (symlog scale)", True)] if kl else []
    for x, xlabel, log_x in plots:
        png = Path("plots") / f"frontier-reward-vs-{x.split('_')[0]}.png"
        plot_frontier(summary, x, root / png, xlabel, log_x)
        md += [f"![reward vs {x}]({png.as_posix()})", ""]
    is_readable = np.array([readable(r) for _, r in summary.iterrows()], dtype=bool)
    candidates, unreadable = summary[is_readable], list(summary.model[~is_readable])
    mins = candidates[["kl_seq"]].to_numpy() if kl else None
    front = candidates[pareto_mask(candidates[["reward_mean", "diversity"]].to_numpy(), mins)]
    md += [
        f"Pareto-optimal models (no other model has higher-or-equal reward and diversity{' and lower-or-equal KL' if kl else ''}, "
        "better in one; on run means):",
        "",
        table(front, lambda r: r.model) if len(front) else "none: every model is left out (below).",
        "",
    ]
    if unreadable:
        md += [
            f"Left out of the front and of the comparisons below: more than {UNREADABLE_SHARE:.0%} of their texts hold "
            "undecodable bytes (U+FFFD), so their diversity is not a diversity of text: "
            + ", ".join(f"`{m}`" for m in unreadable)
            + ".",
            "",
        ]
    spread = "the std across training seeds" if repeats > 1 else "the run-to-run std"
    seed_models = seed_and_challengers(summary)[0]
    if kl and len(seed_models):
        better = beats_seed(summary)
        md += [
            "Models beating every `seed`-recipe model on reward and diversity at once, with lower KL, each by more "
            f"than {spread}: " + (", ".join(f"`{m}`" for m in better.model) if len(better) else "none") + ".",
            "",
        ]
        closest = None if len(better) else closest_to_seed(summary)
        if closest:
            row, wins, worst = closest
            md += [
                f"Closest: `{row.model}`, which beats {wins} of the {len(seed_models)}. Its smallest lead over them on each axis, "
                f"net of {spread} (negative: short): "
                + "; ".join(f"{axis} {lead:+.3f} (against `{model}`)" for axis, (lead, model) in worst.items())
                + ".",
                "",
            ]
    wins = beaten_by(summary)
    md += [f"Who beats whom (higher reward and diversity{', lower KL' if kl else ''}, each by more than {spread}):", ""]
    md += [f"- `{m}` beats " + ", ".join(f"`{b}`" for b in beaten) for m, beaten in wins.items()] or [
        "- no model beats another"
    ]
    md += [""]

    md += ["## Training", "", "| model | pairs / steps | seconds | pairs/s | final loss |", "|---|---|---|---|---|"]
    for model in (e.model for e in item.evaluations if not isinstance(e.model, Original)):
        info = read_json(model.path / "train.json") or {}
        losses = [h["loss"] for h in info.get("log_history", []) if "loss" in h]
        md.append(
            f"| {model.name} | {info.get('pairs', info.get('steps', '?'))} | {info.get('train_seconds', '?')} | "
            f"{info.get('pairs_per_second', '')} | {losses[-1] if losses else float('nan'):.4f} |"
        )

    md += ["", "## Example texts (evaluation run 0: highest, median and lowest reward)", ""]
    for name in summary.model:
        df = read_parquet(evaluation_of[name].run_path(0, ".parquet")).sort_values("reward", kind="stable")
        df["full"] = (df["prompt"] + df["text"]) if "prompt" in df.columns else df["text"]
        picks = df.iloc[[len(df) - 1, len(df) // 2, 0]] if len(df) else df
        md += [f"**{name}**", ""] + [f"- ({r:+.2f}) {t.strip()!r}" for r, t in zip(picks.reward, picks.full)] + [""]
    md += [
        "Per-run numbers: [results.csv](results.csv). Each trained model's directory has a model card "
        "(README.md) with its training and these evaluation numbers.",
        "",
    ]
    rows = per_model.set_index("model")
    for model in (e.model for e in item.evaluations if isinstance(e.model, TRAINED)):
        write_text(
            model.path / "README.md", model_card(model, {"model": model.name, **rows.loc[model.name].to_dict()}, cfg)
        )
    write_text(item.path, "\n".join(md))
    write_text(
        root / "report.html",
        render("\n".join(md), root, cfg.model_dump(), str(services.device), f"prefalign report: {cfg.name}"),
    )
    write_json(item.meta, {"key": item.key})
    services.log(f"report: {item.path}")
