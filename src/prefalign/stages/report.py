"""Tables and plots from the evaluation runs: the `report` stage.

Writes `results.csv` (one row per model x evaluation run, every metric), `report.md` (and the
same as one self-contained page, `report.html`, with the config and versions; report_html.py) with:
per pair strategy, the training curves of its models (loss, reward margin, reward accuracy);
the original experiment's table shape per pair strategy (the original model, then loss x beta;
cells are mean (std across runs)) and a PNG of the reward distributions per strategy; a table of
iterative rounds and online models; the frontier: reward against KL and reward against diversity,
one point per model (mean over runs, error bars one std across runs), the original marked, colour
by method and marker by pair rule, and the Pareto-optimal models (highest reward and diversity,
lowest KL, on run means); and, when the run has `seed`-recipe models, which other models beat every
one of them on reward and diversity with lower KL by more than the run-to-run std. Run with:

    prefalign report CONFIG
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from prefalign.engine.metrics import pareto_mask
from prefalign.engine.pair_rules import PAIR_RULES
from prefalign.plan import RESULT_COLUMNS, TRAINED, DpoModel, Original, Report
from prefalign.services import Services, model_info
from prefalign.stages.evaluate import run_results
from prefalign.stages.model_card import model_card
from prefalign.stages.report_html import render
from prefalign.store import atomic_path, read_json, write_json, write_text


def metric_columns(results: pd.DataFrame) -> list[str]:
    return [c for c in results.columns if c not in (*RESULT_COLUMNS, "run")]


def results_table(item: Report) -> pd.DataFrame:
    """One row per model and evaluation run: the model's description, the run index, every metric."""
    return pd.DataFrame([{**evaluation.model.row(), "run": k, **metrics}
                         for evaluation in item.evaluations for k, metrics in enumerate(run_results(evaluation))])  # fmt: skip


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and std (`<metric>_sd`) across runs of every metric, one row per model, run order kept."""
    metrics = metric_columns(results)
    by_model = results.groupby("model", sort=False)
    out = (by_model[list(RESULT_COLUMNS[1:])].first().join(by_model[metrics].mean())
           .join(by_model[metrics].std(ddof=1), rsuffix="_sd").reset_index())  # fmt: skip
    out["runs"] = by_model.size().to_numpy()
    return out


def method_of(r) -> str:
    """Colour group of a model on the frontier plots."""
    if r.method in ("original", "rloo"):
        return r.method
    if r.method == "iterative":
        return f"iterative {r.loss}"
    return f"{r.loss} ({r.recipe})"


def beats_seed(summary: pd.DataFrame) -> pd.DataFrame:
    """Models that beat every `seed`-recipe DPO model on reward and diversity, with lower KL, each by
    more than the larger of the two models' run-to-run stds."""
    seed = summary[(summary.method == "dpo") & (summary.recipe == "seed")]
    rows = []
    for _, r in summary[(summary.recipe != "seed") & (summary.method != "original")].iterrows():
        ok = all(
            r.reward_mean - s.reward_mean > max(r.reward_mean_sd, s.reward_mean_sd)
            and r.diversity - s.diversity > max(r.diversity_sd, s.diversity_sd)
            and s.kl_seq - r.kl_seq > max(r.kl_seq_sd, s.kl_seq_sd)
            for _, s in seed.iterrows()
        )
        if ok and len(seed):
            rows.append(r)
    return pd.DataFrame(rows)


def _cell(mean: float, sd: float) -> str:
    return f"{mean:.3f} ({sd:.3f})" if np.isfinite(sd) else f"{mean:.3f}"


def table(rows: pd.DataFrame, label) -> str:
    """Markdown table of the main metrics; `label(row)` names each line."""
    has_kl = "kl_seq" in rows.columns
    head = "| model | reward | diversity | distinct-2 | positive rate |" + (" KL (seq) | KL / token |" if has_kl else "")
    lines = [head + " mean length |", "|---" * (head.count("|") - 1 + 1) + "|"]
    for _, r in rows.iterrows():
        kl = f" {_cell(r.kl_seq, r.kl_seq_sd)} | {r.kl_token:.4f} |" if has_kl else ""
        lines.append(f"| {label(r)} | {_cell(r.reward_mean, r.reward_mean_sd)} | {_cell(r.diversity, r.diversity_sd)} | "
                     f"{r.distinct_2:.3f} | {_cell(r.positive_rate, r.positive_rate_sd)} |{kl} {r.mean_tokens:.1f} |")  # fmt: skip
    return "\n".join(lines)


def strategy_table(summary: pd.DataFrame, strategy: str) -> str:
    rows = pd.concat([summary[summary.method == "original"], summary[(summary.method == "dpo") & (summary.strategy == strategy)]])
    return table(rows, lambda r: "original model" if r.method == "original" else f"{r.loss} {r.beta:g} ({r.recipe})")


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path) -> None:
    plt = pyplot()

    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=out.suffix.lstrip("."))
    plt.close(fig)


def plot_frontier(summary: pd.DataFrame, x: str, out: Path, xlabel: str, log_x: bool = False,
                  colour_by=None) -> None:  # fmt: skip
    """Reward (y) against metric `x`, one point per model with std error bars; colour = method (or
    `colour_by(row)`), marker = pair rule (RLOO: a cross; the original: a star, black by default)."""
    group = colour_by or method_of
    plt = pyplot()

    markers = dict(zip(PAIR_RULES, "osD^vP"))
    marker = lambda r: "*" if r.method == "original" else "X" if r.method == "rloo" else markers.get(r.strategy, "o")  # noqa: E731
    methods = [m for m in dict.fromkeys(group(r) for _, r in summary.iterrows()) if m != "original"]
    palette = [c for i, c in enumerate(plt.cm.tab10.colors) if i != 7] + list(plt.cm.Dark2.colors)  # no grey
    colours = {"original": "black", **{m: palette[i % len(palette)] for i, m in enumerate(methods)}}
    fig, ax = plt.subplots(figsize=(8.5, 4.8), dpi=130)
    for _, r in summary.iterrows():
        size = 13 if r.method == "original" else 7
        ax.errorbar(r[x], r.reward_mean, xerr=np.nan_to_num(r[f"{x}_sd"]), yerr=np.nan_to_num(r.reward_mean_sd),
                    marker=marker(r), markersize=size, color=colours[group(r)], linestyle="none", elinewidth=0.8,
                    capsize=2, alpha=0.9, zorder=3 if r.method == "original" else 2)  # fmt: skip
    line = lambda **kw: plt.Line2D([], [], linestyle="none", **kw)  # noqa: E731
    shape = lambda m: "*" if m.endswith("original") else "X" if m.endswith("rloo") else "o"  # noqa: E731
    originals = any(group(r) == "original" for _, r in summary.iterrows())
    handles = [line(color="black", marker="*", markersize=10, label="original")] if originals else []
    handles += [line(color=colours[m], marker=shape(m), label=m) for m in methods]
    handles += [line(color="black", marker=mk, markerfacecolor="none", label=f"{s} pairs")
                for s, mk in markers.items() if s in set(summary.strategy)]  # fmt: skip
    ax.legend(handles=handles, fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
    if log_x:
        # KL spans from 0 (the original) to hundreds of nats for collapsed models: linear near 0, log beyond.
        ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mean reward (positive-class logit)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, out)


def colourblind_safe() -> list[str]:
    """Matplotlib's Tableau colour-blind palette without its greys (the original is drawn in black)."""
    plt = pyplot()

    greys = {"#ABABAB", "#595959", "#898989", "#CFCFCF"}
    return [c for c in plt.style.library["tableau-colorblind10"]["axes.prop_cycle"].by_key()["color"] if c.upper() not in greys]


def plot_training(models, title: str, out: Path) -> None:
    """Training curves from each model's logged history, one line per model (colour-blind-safe
    colours): loss, reward margin and reward accuracy against the training step."""
    plt = pyplot()

    panels = (("loss", "training loss"), ("rewards/margins", "reward margin (beta x log-ratio gap)"),
              ("rewards/accuracies", "reward accuracy (share of pairs)"))  # fmt: skip
    colours = colourblind_safe()
    fig, axes = plt.subplots(1, len(panels), figsize=(11, 3.4), dpi=120)
    for i, model in enumerate(models):
        history = (read_json(model.path / "train.json") or {}).get("log_history", [])
        for ax, (key, _) in zip(axes, panels):
            points = [(h["step"], h[key]) for h in history if key in h and "step" in h]
            if points:
                ax.plot(*zip(*points), label=model.name, color=colours[i % len(colours)], linewidth=1.3)
    for ax, (_, label) in zip(axes, panels):
        ax.set_xlabel("training step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    rows = -(-len(labels) // 3)  # the legend below the panels, three models a row: it hides no curve
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.05 + 0.06 * rows, 1, 1))
    _save(fig, out)


def run_rewards(evaluation) -> np.ndarray:
    """Every reward of every run of one evaluation."""
    runs = [evaluation.run_path(k, ".parquet") for k in range(evaluation.runs)]
    return np.concatenate([pd.read_parquet(f, columns=["reward"])["reward"].to_numpy() for f in runs])


def reward_span(rewards) -> tuple[float, float]:
    """The reward range distribution plots share (0.5th to 99.5th percentile over all the arrays
    in `rewards`), so that the plots of different pair strategies can be compared by eye."""
    return min(float(np.percentile(r, 0.5)) for r in rewards), max(float(np.percentile(r, 99.5)) for r in rewards)


def plot_rewards(rewards: dict[str, np.ndarray], title: str, out: Path, span: tuple[float, float] | None = None) -> None:
    """Step histograms of each model's rewards (`rewards`: model name -> its rewards over every
    evaluation run), one line per model (the original in black), over `span` (default: their own)."""
    plt = pyplot()
    lo, hi = span or reward_span(rewards.values())
    bins = np.linspace(lo, hi, 60)
    colours = colourblind_safe()
    fig, ax = plt.subplots(figsize=(9, 4), dpi=120)
    for i, (m, r) in enumerate(rewards.items()):
        style = dict(color="black", linewidth=2.0) if m == "original" else dict(color=colours[(i - 1) % len(colours)], linewidth=1.3)
        ax.hist(r, bins=bins, density=True, histtype="step", label=m, **style)
    ax.set_xlabel("reward (positive-class logit)")
    ax.set_ylabel("density")
    ax.set_title(title)
    # Beside the axes, not on them: the histograms' peaks sit at both ends, where a legend would hide them.
    ax.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    _save(fig, out)


def write_report(item: Report, services: Services) -> None:
    """The `report` stage: results.csv, report.md and the plots, then report.meta.json."""
    results = results_table(item)
    root, cfg = item.path.parent, item.config
    with atomic_path(root / "results.csv") as tmp:
        results.to_csv(tmp, index=False)
    summary = summarize(results)
    models = model_info(cfg)
    kl = "kl_seq" in summary.columns
    evaluation_of = {e.model.name: e for e in item.evaluations}
    grid = [e.model for e in item.evaluations if type(e.model) is DpoModel]
    pair_files = list({model.pairs.key: model.pairs for model in grid}.values())
    samples_meta = read_json(pair_files[0].samples.meta) or {}  # the main samples every grid pair file draws from

    md = [f"# prefalign report: {cfg.name}", "",
          f"Generated {time.strftime('%Y-%m-%d %H:%M')} from `{root}`. Rewards are the classifier's "
          + ("single logit" if cfg.reward.single_logit else f"`{cfg.reward.positive_label}` logit") + "; diversity is the entropy (nats) of the unigram distribution of "
          "policy token ids over each run's texts; distinct-2 is the share of distinct token bigrams; positive rate "
          "is the share of texts the classifier labels positive"
          + ("; KL is KL(policy || original) in nats per text (and per generated token), estimated on the run's "
             "own top-k / top-p samples from both models' full log-probs (biased; see metrics.kl_estimate)" if kl else "")
          + f". Cells: mean (std across {cfg.evaluate.runs} runs of {cfg.evaluate.samples} samples).", "",
          "## Models", "",
          f"- policy: `{models.get('policy', {}).get('ref', cfg.policy.model)}`"
          + (f" (held-out perplexity {models['policy']['perplexity']:.1f})" if "perplexity" in models.get("policy", {}) else ""),
          f"- reward model: `{models.get('reward_model', {}).get('ref', cfg.reward.model)}`"
          + (f" (held-out accuracy {models['reward_model']['accuracy']:.3f})" if "accuracy" in models.get("reward_model", {}) else ""),
          f"- training recipe: `{cfg.train.recipe}`" + (f", overrides {cfg.train.dpo}" if cfg.train.dpo else ""),
          f"- prompts: {'BOS token only' if cfg.sampling.prompts is None else cfg.sampling.prompts.model_dump()}",
          f"- pair samples: {samples_meta.get('samples', '?')} texts, mean reward {samples_meta.get('reward_mean', float('nan')):.3f}",
          ""]  # fmt: skip
    rewards = {name: run_rewards(evaluation_of[name]) for name in ["original", *(m.name for m in grid)]}
    span = reward_span(rewards.values())
    for pairs in pair_files:
        strategy = pairs.strategy
        pmeta = read_json(pairs.meta) or {}
        rule = ", ".join(f"{k} {v}" for k, v in pairs.rule.items())
        png = Path("plots") / f"rewards-{strategy}.png"
        names = ["original"] + [model.name for model in grid if model.pairs is pairs]
        plot_rewards({name: rewards[name] for name in names}, f"reward distributions, {strategy} pairs", root / png, span)
        curves = Path("plots") / f"training-{strategy}.png"
        plot_training([model for model in grid if model.pairs is pairs], f"training, {strategy} pairs", root / curves)
        md += [f"## Pairs: {strategy}" + (f" ({rule})" if rule else ""), "",
               f"{pmeta.get('pairs', '?')} pairs, mean reward gap {pmeta.get('mean_gap', float('nan')):.3f} "
               f"(chosen {pmeta.get('chosen_reward_mean', float('nan')):.3f} +- {pmeta.get('chosen_reward_std', float('nan')):.3f}, "
               f"rejected {pmeta.get('rejected_reward_mean', float('nan')):.3f}).", "",
               strategy_table(summary, strategy), "", f"![reward distributions, {strategy} pairs]({png.as_posix()})", "",
               f"![training curves, {strategy} pairs]({curves.as_posix()})", ""]  # fmt: skip

    # Each iterative chain, round 1 (its grid model) first, then the RLOO models.
    labels = {"original": "original model"}
    labels.update({model.name: f"{model.name} (round 1 of iter-{model.name})" if type(model) is DpoModel else model.name
                   for chain in item.chains for model in chain})  # fmt: skip
    labels.update({name: name for name in summary[summary.method == "rloo"].model})
    if len(labels) > 1:
        online = summary.set_index("model").loc[list(labels)].reset_index()
        md += ["## On-policy rounds and online RL", "",
               "Iterative DPO: each round samples from the previous round's model, scores, pairs and trains "
               f"(`{cfg.iterative.strategy}` pairs, reference fixed to the original); round 1 is the grid model with "
               "the chain's settings. RLOO: TRL's RLOOTrainer with the classifier's positive logit as reward, "
               f"{cfg.online.steps} steps.", "", table(online, lambda r: labels[r.model]), ""]  # fmt: skip

    md += ["## Frontier", ""]
    plots = [("diversity", "diversity (unigram entropy, nats)", False)]
    plots += [("kl_seq", "KL(policy || original), nats per text (symlog scale)", True)] if kl else []
    for x, xlabel, log_x in plots:
        png = Path("plots") / f"frontier-reward-vs-{x.split('_')[0]}.png"
        plot_frontier(summary, x, root / png, xlabel, log_x)
        md += [f"![reward vs {x}]({png.as_posix()})", ""]
    mins = summary[["kl_seq"]].to_numpy() if kl else None
    front = summary[pareto_mask(summary[["reward_mean", "diversity"]].to_numpy(), mins)]
    md += [f"Pareto-optimal models (no other model has higher-or-equal reward and diversity{' and lower-or-equal KL' if kl else ''}, "
           "better in one; on run means):", "", table(front, lambda r: r.model), ""]  # fmt: skip
    if kl and ((summary.method == "dpo") & (summary.recipe == "seed")).any():
        better = beats_seed(summary)
        md += ["Models beating every `seed`-recipe model on reward and diversity at once, with lower KL, each by more "
               "than the run-to-run std: " + (", ".join(f"`{m}`" for m in better.model) if len(better) else "none") + ".", ""]  # fmt: skip

    md += ["## Training", "", "| model | pairs / steps | seconds | pairs/s | final loss |", "|---|---|---|---|---|"]
    for model in (e.model for e in item.evaluations if not isinstance(e.model, Original)):
        info = read_json(model.path / "train.json") or {}
        losses = [h["loss"] for h in info.get("log_history", []) if "loss" in h]
        md.append(f"| {model.name} | {info.get('pairs', info.get('steps', '?'))} | {info.get('train_seconds', '?')} | "
                  f"{info.get('pairs_per_second', '')} | {losses[-1] if losses else float('nan'):.4f} |")  # fmt: skip

    md += ["", "## Example texts (evaluation run 0: highest, median and lowest reward)", ""]
    for name in summary.model:
        df = pd.read_parquet(evaluation_of[name].run_path(0, ".parquet")).sort_values("reward", kind="stable")
        df["full"] = (df["prompt"] + df["text"]) if "prompt" in df.columns else df["text"]
        picks = df.iloc[[len(df) - 1, len(df) // 2, 0]] if len(df) else df
        md += [f"**{name}**", ""] + [f"- ({r:+.2f}) {t.strip()!r}" for r, t in zip(picks.reward, picks.full)] + [""]
    md += ["Per-run numbers: [results.csv](results.csv). Each trained model's directory has a model card "
           "(README.md) with its training and these evaluation numbers.", ""]
    rows = summary.set_index("model")
    for model in (e.model for e in item.evaluations if isinstance(e.model, TRAINED)):
        write_text(model.path / "README.md", model_card(model, {"model": model.name, **rows.loc[model.name].to_dict()}, cfg))
    write_text(item.path, "\n".join(md))
    write_text(root / "report.html", render("\n".join(md), root, cfg.model_dump(), str(services.device),
                                            f"prefalign report: {cfg.name}"))  # fmt: skip
    write_json(item.meta, {"key": item.key})
    services.log(f"report: {item.path}")
