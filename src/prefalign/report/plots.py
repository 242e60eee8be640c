"""The report's figures: reward distributions, training curves and the frontier, as PNG files.

Each function draws one figure from numbers it is given (or, for training curves, the models'
train.json) and writes it atomically; the colours are colour-blind-safe, the original is black,
legends sit beside or below the axes so they hide no data, and the figures meant to be compared
share their axis ranges (the caller passes them). The report's sections name their figures as
specs (RewardsFigure, CurvesFigure, FrontierFigure: the file, its alt text and what it shows);
`draw_figures` draws them, the report stage's plotting step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from prefalign.engine.pair_rules import PAIR_RULES
from prefalign.pipeline.store import atomic_path, read_json
from prefalign.report.tables import BEST_OF_N, best_of_n_curve


def method_of(r) -> str:
    """Colour group of a model on the frontier plots."""
    if r.method in ("original", "rloo"):
        return r.method
    if r.method == "iterative":
        return f"iterative {r.loss}"
    return f"{r.loss} ({r.recipe})"


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out: Path) -> None:
    plt = pyplot()

    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=out.suffix.lstrip("."))
    plt.close(fig)


def plot_frontier(summary: pd.DataFrame, x: str, out: Path, xlabel: str, log_x: bool = False, colour_by=None) -> None:
    """Reward (y) against metric `x`, one point per model with std error bars; colour = method (or
    `colour_by(row)`), marker = pair rule (RLOO: a cross; the original: a star, black by default)."""
    group = colour_by or method_of
    plt = pyplot()
    best = best_of_n_curve(summary)  # drawn as a curve, not as points
    summary = summary[summary.method != BEST_OF_N]

    markers = dict(zip(PAIR_RULES, "osD^vPh"))
    marker = lambda r: "*" if r.method == "original" else "X" if r.method == "rloo" else markers.get(r.strategy, "o")  # noqa: E731
    methods = [m for m in dict.fromkeys(group(r) for _, r in summary.iterrows()) if m != "original"]
    palette = colourblind_safe()
    colours = {"original": "black", **{m: palette[i % len(palette)] for i, m in enumerate(methods)}}
    fig, ax = plt.subplots(figsize=(8.5, 4.8), dpi=130)
    for _, r in summary.iterrows():
        size = 13 if r.method == "original" else 7
        ax.errorbar(
            r[x],
            r.reward_mean,
            xerr=np.nan_to_num(r[f"{x}_sd"]),
            yerr=np.nan_to_num(r.reward_mean_sd),
            marker=marker(r),
            markersize=size,
            color=colours[group(r)],
            linestyle="none",
            elinewidth=0.8,
            capsize=2,
            alpha=0.9,
            zorder=3 if r.method == "original" else 2,
        )
    line = lambda **kw: plt.Line2D([], [], linestyle="none", **kw)  # noqa: E731
    shape = lambda m: "*" if m.endswith("original") else "X" if m.endswith("rloo") else "o"  # noqa: E731
    originals = any(group(r) == "original" for _, r in summary.iterrows())
    handles = [line(color="black", marker="*", markersize=10, label="original")] if originals else []
    handles += [line(color=colours[m], marker=shape(m), label=m) for m in methods]
    handles += [
        line(color="black", marker=mk, markerfacecolor="none", label=f"{s} pairs")
        for s, mk in markers.items()
        if s in set(summary.strategy)
    ]
    if len(best):
        # The best-of-N policies of the original: a reference curve, each point marked with its N.
        ax.plot(best[x], best.reward_mean, linestyle="--", marker=".", color="0.4", zorder=1)
        for _, r in best.iterrows():
            ax.annotate(
                f"{int(r.best_of)}", (r[x], r.reward_mean), xytext=(2, 3), textcoords="offset points", fontsize=6
            )
        handles.append(plt.Line2D([], [], linestyle="--", marker=".", color="0.4", label="best-of-N (N marked)"))
    ax.legend(handles=handles, fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
    if log_x:
        # KL spans from 0 (the original) to hundreds of nats for collapsed models: linear near 0, log beyond.
        ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mean reward (positive-class logit)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out)


# Okabe & Ito's colour-blind-safe palette without its black (the original is drawn in black), in
# the order whose neighbours differ most in hue; yellow, faint on white, last.
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442")


def colourblind_safe() -> list[str]:
    """The colours of the models' lines and points (OKABE_ITO), cycled when there are more models."""
    return list(OKABE_ITO)


# Training-curve panels: (key in the Trainer's log history, y-axis label).
DPO_CURVES = (
    ("loss", "training loss"),
    ("rewards/margins", "reward margin (beta x log-ratio gap)"),
    ("rewards/accuracies", "reward accuracy (share of pairs)"),
)
RLOO_CURVES = (("reward", "mean reward of the step's texts"), ("kl", "KL to the reference (nats per text)"))


def logged(model, key: str) -> list[tuple[int, float]]:
    """(step, value) of `key` in a trained model's log history (its train.json)."""
    history = (read_json(model.path / "train.json") or {}).get("log_history", [])
    return [(h["step"], h[key]) for h in history if key in h and "step" in h and np.isfinite(h[key])]


def curve_limits(models, panels) -> dict[str, tuple[float, float]]:
    """One y range per panel over all `models`, so that figures of the same kind compare by eye."""
    limits = {}
    for key, _ in panels:
        values = [v for model in models for _, v in logged(model, key)]
        if values:
            lo, hi = min(values), max(values)
            pad = 0.05 * (hi - lo) or 0.05 * max(abs(hi), 1.0)
            limits[key] = (lo - pad, hi + pad)
    return limits


# A curve of this many points or fewer is drawn with its points marked: a short training logs a few
# steps, and a line through one point is nothing to see, through two it reads as a trend, not as data.
FEW_POINTS = 20


def few_points_marked(n: int) -> dict:
    """Line2D settings for a curve of `n` points: markers (larger for a single point) when n <= FEW_POINTS."""
    if n > FEW_POINTS:
        return {}
    return {"marker": "o", "markersize": 6 if n == 1 else 3.5}


def plot_training(models, title: str, out: Path, panels=DPO_CURVES, limits: dict | None = None) -> None:
    """Training curves from each model's logged history, one line per model (colour-blind-safe
    colours; the repeats of one model over training seeds share theirs), one panel per (key, label) of `panels` against the training step; `limits`: key ->
    y range (default: each panel's own)."""
    plt = pyplot()

    colours = colourblind_safe()
    groups = list(dict.fromkeys(getattr(model, "group", model.name) for model in models))
    fig, axes = plt.subplots(1, len(panels), figsize=(11, 3.4), dpi=120, squeeze=False)
    axes = axes[0]
    labelled = set()
    for model in models:
        group = getattr(model, "group", model.name)  # a model's repeats over training seeds: one colour, one label
        for ax, (key, _) in zip(axes, panels):
            points = logged(model, key)
            if points:
                ax.plot(
                    *zip(*points),
                    label=None if group in labelled else group,
                    color=colours[groups.index(group) % len(colours)],
                    linewidth=1.3,
                    **few_points_marked(len(points)),
                )
        labelled.add(group)
    for ax, (key, label) in zip(axes, panels):
        ax.set_xlabel("training step")
        ax.set_ylabel(label)
        if key in (limits or {}):
            ax.set_ylim(*limits[key])
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    columns = 4 if len(labels) == 4 else 3  # the legend below the panels, in rows: it hides no curve
    rows = -(-len(labels) // columns)
    fig.legend(handles, labels, loc="lower center", ncol=columns, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.05 + 0.06 * rows, 1, 1))
    save_figure(fig, out)


def reward_span(rewards) -> tuple[float, float]:
    """The reward range distribution plots share (0.5th to 99.5th percentile over all the arrays
    in `rewards`), so that the plots of different pair strategies can be compared by eye."""
    return min(float(np.percentile(r, 0.5)) for r in rewards), max(float(np.percentile(r, 99.5)) for r in rewards)


def plot_rewards(
    rewards: dict[str, np.ndarray], title: str, out: Path, span: tuple[float, float] | None = None
) -> None:
    """Step histograms of each model's rewards (`rewards`: model name -> its rewards over every
    evaluation run), one line per model (the original in black), over `span` (default: their own)."""
    plt = pyplot()
    lo, hi = span or reward_span(rewards.values())
    bins = np.linspace(lo, hi, 60)
    colours = colourblind_safe()
    fig, ax = plt.subplots(figsize=(9, 4), dpi=120)
    for i, (m, r) in enumerate(rewards.items()):
        style = (
            dict(color="black", linewidth=2.0)
            if m == "original"
            else dict(color=colours[(i - 1) % len(colours)], linewidth=1.3)
        )
        ax.hist(r, bins=bins, density=True, histtype="step", label=m, **style)
    ax.set_xlabel("reward (positive-class logit)")
    ax.set_ylabel("density")
    ax.set_title(title)
    # Beside the axes, not on them: the histograms' peaks sit at both ends, where a legend would hide them.
    ax.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    save_figure(fig, out)


# ---- the report's figures as specs ---------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RewardsFigure:
    """Reward distributions of some models over a shared span (`plot_rewards`)."""

    path: str  # relative to the run directory, as report.md links it
    alt: str
    title: str
    rewards: dict[str, np.ndarray]  # model (group) -> its rewards over every evaluation run
    span: tuple[float, float]

    def draw(self, root: Path) -> None:
        plot_rewards(self.rewards, self.title, root / self.path, self.span)


@dataclass(frozen=True, eq=False)
class CurvesFigure:
    """Training curves of some models (`plot_training`), y ranges shared with the `shared` models'
    (every figure of one kind compares by eye; empty: the panels' own ranges)."""

    path: str
    alt: str
    title: str
    models: tuple
    panels: tuple = DPO_CURVES
    shared: tuple = ()

    def draw(self, root: Path) -> None:
        limits = curve_limits(self.shared, self.panels) if self.shared else None
        plot_training(list(self.models), self.title, root / self.path, self.panels, limits)


@dataclass(frozen=True, eq=False)
class FrontierFigure:
    """Reward against metric `x`, one point per model group (`plot_frontier`)."""

    path: str
    alt: str
    summary: pd.DataFrame
    x: str
    xlabel: str
    log_x: bool

    def draw(self, root: Path) -> None:
        plot_frontier(self.summary, self.x, root / self.path, self.xlabel, self.log_x)


Figure = RewardsFigure | CurvesFigure | FrontierFigure


def draw_figures(figures, root: Path) -> None:
    """Draw every figure spec into its file under `root`."""
    for figure in figures:
        figure.draw(root)
