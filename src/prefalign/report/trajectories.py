"""The trajectories figure (`evaluate.during_training`): reward against KL along training, a curve per model.

Each trained model's trajectory (eval/<model>/trajectory.csv, written by stages/trajectory.py) is a
line from its step-0 point (the start model) through its points to its final evaluation (the
summary's reward_mean and kl_seq: the larger marker). An iterative chain is one curve through its
rounds: round r trains from round r-1's weights, so its points continue where round r-1's ended; the
start of each later round is a hollow ring. The original is a black star at KL 0 and the best-of-N
policies, when the summary has them (method `best_of_n`), a dashed black curve. The KL axis is
symlog, linear below the smallest positive KL drawn, so that the step-0 points (KL 0) show.

With judges or a fluency model (TrajectoryScores items), each point also carries their scores of its
texts, and a second figure plots them against the training reward along the same curves: a curve
that climbs in training reward while falling under a judge is over-optimisation (Gao et al. 2022)
caught as it happens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from prefalign.pipeline.evidence_items import TrajectoryScores
from prefalign.pipeline.items import IterativeRound, Report
from prefalign.report.evidence import score_panels
from prefalign.report.plots import colourblind_safe, pyplot, save_figure

TRAJECTORIES_PATH = "plots/frontier-trajectories.png"
JUDGED_PATH = "plots/judges-along-training.png"


@dataclass(frozen=True, eq=False)
class Curve:
    """One line of the figure: a model's trajectory, or an iterative chain's."""

    label: str  # a model group's name (its repeats share it), or the chain's
    points: pd.DataFrame  # kl_seq, reward_mean and the judges' and fluency columns of each point, in order
    starts: tuple[int, ...]  # the rows of `points` where a later round of a chain starts
    end: tuple[float, float] | None  # the final evaluation (kl_seq, reward_mean); None without KL


def read_trajectory(model, scored: list[Path] = ()) -> pd.DataFrame | None:
    """A trained model's trajectory.csv with the columns of its scores (`scored`: TrajectoryScores
    outputs) joined on the step, or None when the trajectory is missing or cannot be read (a missing
    score leaves its columns out)."""
    try:
        points = pd.read_csv(model.trajectory.path)
    except (OSError, ValueError):
        return None
    for path in scored:
        try:
            points = points.merge(pd.read_csv(path), on="step", how="left")
        except (OSError, ValueError, KeyError):
            continue
    return points


def score_columns(item: Report) -> tuple[tuple[str, str], ...]:
    """(column, axis label) of each judge's and the fluency model's score of the training-curve texts."""
    scorers = {x.scorer.name: x.scorer for x in item.evidence if isinstance(x, TrajectoryScores)}
    judges = [name for name, scorer in scorers.items() if scorer.kind == "judge"]
    return score_panels(judges, any(scorer.kind == "fluency" for scorer in scorers.values()))


def final_point(summary: pd.DataFrame, group: str) -> tuple[float, float] | None:
    """(kl_seq, reward_mean) of a model group's summary row; None when the run measures no KL."""
    rows = summary[summary.model == group]
    if "kl_seq" not in summary.columns or rows.empty:
        return None
    return float(rows.kl_seq.iloc[0]), float(rows.reward_mean.iloc[0])


def trajectory_curves(item: Report, summary: pd.DataFrame) -> list[Curve]:
    """A curve per iterative chain and per other trained model with a trajectory on disk."""
    scored: dict[str, list[Path]] = {}  # a model's key -> its TrajectoryScores outputs
    for x in item.evidence:
        if isinstance(x, TrajectoryScores):
            scored.setdefault(x.model.key, []).append(x.path)
    chained = {model.key for chain in item.chains for model in chain}
    lines = [tuple(chain) for chain in item.chains]
    lines += [
        (e.model,) for e in item.evaluations if getattr(e.model, "trajectory", None) and e.model.key not in chained
    ]
    curves = []
    for models in lines:
        parts = [read_trajectory(model, scored.get(model.key, [])) for model in models if model.trajectory]
        if not parts or any(part is None for part in parts):
            continue
        last = models[-1]
        label = f"{last.chain} (rounds 1-{last.round})" if isinstance(last, IterativeRound) else last.group
        starts = tuple(np.cumsum([len(part) for part in parts])[:-1].tolist())
        points = pd.concat(parts, ignore_index=True)
        curves.append(Curve(label, points, starts, final_point(summary, last.group)))
    return curves


def linear_below(values) -> float:
    """The symlog axis's linear range: the power of ten at or below the smallest positive value, in [1e-3, 1]."""
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    if not positive:
        return 1.0
    return float(min(1.0, max(1e-3, 10 ** math.floor(math.log10(min(positive))))))


def plot_trajectories(curves: list[Curve], summary: pd.DataFrame, out: Path) -> None:
    """Reward (y) against KL (x, symlog) along training: `curves`, the original and best-of-N."""
    plt = pyplot()
    palette, labels = colourblind_safe(), list(dict.fromkeys(curve.label for curve in curves))
    fig, ax = plt.subplots(figsize=(8.5, 4.8), dpi=130)
    xs: list[float] = []
    labelled = set()
    for curve in curves:
        colour = palette[labels.index(curve.label) % len(palette)]
        x, y = curve.points.kl_seq.to_numpy(), curve.points.reward_mean.to_numpy()
        if curve.end is not None:
            x, y = np.append(x, curve.end[0]), np.append(y, curve.end[1])
            ax.plot(*curve.end, marker="o", markersize=8, color=colour, markeredgecolor="black", zorder=3)
        label = None if curve.label in labelled else curve.label
        ax.plot(x, y, color=colour, linewidth=1.3, marker="o", markersize=3, label=label, alpha=0.9)
        ax.plot(x[list(curve.starts)], y[list(curve.starts)], "o", color=colour, markerfacecolor="none", markersize=8)
        labelled.add(curve.label)
        xs += x.tolist()
    original = summary[summary.method == "original"]
    if not original.empty:
        ax.plot(0.0, original.reward_mean.iloc[0], "*", color="black", markersize=13, label="original", zorder=4)
    best_of_n = summary[summary.method == "best_of_n"]
    if not best_of_n.empty and "kl_seq" in best_of_n.columns:
        best_of_n = best_of_n.sort_values("kl_seq")
        ax.plot(best_of_n.kl_seq, best_of_n.reward_mean, "--", color="black", marker=".", label="best-of-N")
        xs += best_of_n.kl_seq.tolist()
    ax.set_xscale("symlog", linthresh=linear_below(xs))
    ax.set_xlabel("KL(policy || original), nats per text (symlog scale)")
    ax.set_ylabel("mean reward (positive-class logit)")
    ax.set_title("along training: every point's texts, then the final evaluation (large marker)", fontsize=9)
    ax.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out)


@dataclass(frozen=True, eq=False)
class TrajectoriesFigure:
    """Reward against KL along training (`plot_trajectories`), the trajectories read when drawn."""

    path: str
    alt: str
    item: Report
    summary: pd.DataFrame

    def draw(self, root: Path) -> None:
        plot_trajectories(trajectory_curves(self.item, self.summary), self.summary, root / self.path)


def plot_judged(curves: list[Curve], panels: list[tuple[str, str]], out: Path) -> None:
    """Each judge's (and the fluency model's) score (y, a panel each) against the training reward (x)
    along training: a line per curve from its start (a ring) to its last point (a dot)."""
    plt = pyplot()
    palette, labels = colourblind_safe(), list(dict.fromkeys(curve.label for curve in curves))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 2.5, 4.2), dpi=130, squeeze=False)
    for ax, (column, label) in zip(axes[0], panels):
        for curve in curves:
            if column not in curve.points.columns:
                continue
            colour = palette[labels.index(curve.label) % len(palette)]
            x, y = curve.points.reward_mean.to_numpy(), curve.points[column].to_numpy()
            ax.plot(x, y, color=colour, linewidth=1.2, marker="o", markersize=3, alpha=0.9)
            ax.plot(x[0], y[0], "o", color=colour, markerfacecolor="none", markersize=8)
            ax.plot(x[-1], y[-1], "o", color=colour, markersize=7, markeredgecolor="black")
        ax.set_xlabel("training reward (mean, along training)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], marker="o", color=palette[i % len(palette)], label=l) for i, l in enumerate(labels)]
    fig.legend(handles=handles, fontsize=7, frameon=False, loc="center right")
    fig.suptitle("judges along training: ring = start, dot = last point", fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    save_figure(fig, out)


@dataclass(frozen=True, eq=False)
class JudgedFigure:
    """The judges' and fluency scores against the training reward along training (`plot_judged`)."""

    path: str
    alt: str
    item: Report
    summary: pd.DataFrame
    panels: tuple[tuple[str, str], ...]

    def draw(self, root: Path) -> None:
        plot_judged(trajectory_curves(self.item, self.summary), list(self.panels), root / self.path)


def trajectory_figures(item: Report, summary: pd.DataFrame) -> tuple:
    """The trajectories figure when the run has evaluate.during_training (and the judged one when it
    has judges or a fluency model too), else none."""
    if item.config.evaluate.during_training is None:
        return ()
    figures: tuple = (TrajectoriesFigure(TRAJECTORIES_PATH, "reward vs KL along training", item, summary),)
    panels = score_columns(item)
    if panels:
        figures += (JudgedFigure(JUDGED_PATH, "judges vs training reward along training", item, summary, panels),)
    return figures
