"""The report's evidence section: the best-of-N reference and the judges, as data and figures.

A trained model's gain is real when it lies above the best-of-N curve at its KL (reranking the
original's samples would not do as well) and when a judge that was never trained on agrees with
the reward. `versus_best_of_n` places each trained model against the curve; `JudgeFigure` plots
the training reward against each judge's reward (and the fluency score), one point per model.
Pure apart from drawing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from prefalign.report.plots import colourblind_safe, method_of, pyplot, save_figure
from prefalign.report.tables import BEST_OF_N, best_of_n_curve


def judge_names(columns) -> list[str]:
    """The judges of a results / summary table, from its `judge_<name>_reward_mean` columns."""
    return [
        c[len("judge_") : -len("_reward_mean")]
        for c in columns
        if c.startswith("judge_") and c.endswith("_reward_mean")
    ]


def curve_at(curve: pd.DataFrame, kl: float) -> float:
    """The best-of-N curve's reward at KL `kl`: linear in log(1 + KL) between its points; beyond its
    largest KL, its largest N's reward (the ladder's top: a flattering comparison for the model)."""
    xs, ys = np.log1p(curve.kl_seq.to_numpy(float)), curve.reward_mean.to_numpy(float)
    return float(np.interp(np.log1p(max(kl, 0.0)), xs, ys))


def versus_best_of_n(summary: pd.DataFrame) -> pd.DataFrame:
    """Each trained model against the best-of-N curve: model, kl_seq, reward_mean, reward_mean_sd,
    `curve_reward` (the curve at the model's KL), `margin` (reward - curve_reward), `above` (margin >
    0; None when the model's KL estimate is negative: the estimate from top-k / top-p samples is
    biased, and below 0 it places the model nowhere on the curve), `beaten_by` (the smallest N whose
    best-of-N has at least the model's reward at no more KL, else empty). Empty without best-of-N
    rows or KL."""
    curve = best_of_n_curve(summary)
    if curve.empty or "kl_seq" not in summary.columns:
        return pd.DataFrame()
    rows = []
    for _, r in summary[~summary.method.isin(["original", BEST_OF_N])].iterrows():
        level = curve_at(curve, r.kl_seq)
        better = curve[(curve.reward_mean >= r.reward_mean) & (curve.kl_seq <= max(r.kl_seq, 0.0))]
        rows.append(
            {
                "model": r.model,
                "kl_seq": r.kl_seq,
                "reward_mean": r.reward_mean,
                "reward_mean_sd": r.get("reward_mean_sd", np.nan),
                "curve_reward": level,
                "margin": r.reward_mean - level,
                "above": bool(r.reward_mean > level) if r.kl_seq >= 0 else None,
                "beaten_by": f"best-of-{int(better.best_of.iloc[0])}" if len(better) else "",
            }
        )
    return pd.DataFrame(rows)


@dataclass(frozen=True, eq=False)
class JudgeFigure:
    """The training reward (x) against each judge's reward and the fluency score (y), one panel each,
    one point per model; the best-of-N policies as a dashed curve."""

    path: str
    alt: str
    summary: pd.DataFrame
    panels: tuple[tuple[str, str], ...]  # (summary column on y, its label)

    def draw(self, root: Path) -> None:
        plt = pyplot()
        fig, axes = plt.subplots(1, len(self.panels), figsize=(4.2 * len(self.panels) + 2, 4.2), dpi=130, squeeze=False)
        models = self.summary[self.summary.method != BEST_OF_N]
        groups = list(dict.fromkeys(method_of(r) for _, r in models.iterrows()))
        palette, trained = colourblind_safe(), [g for g in groups if g != "original"]  # colours as plot_frontier's
        colour = {"original": "black", **{g: palette[i % len(palette)] for i, g in enumerate(trained)}}
        curve = best_of_n_curve(self.summary)
        for ax, (column, label) in zip(axes[0], self.panels):
            for _, r in models.iterrows():
                ax.plot(r.reward_mean, r[column], "*" if r.method == "original" else "o", color=colour[method_of(r)])
            if len(curve):
                ax.plot(curve.reward_mean, curve[column], "--", marker=".", color="0.4")
            ax.set_xlabel("training reward (mean)")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        handles = [plt.Line2D([], [], linestyle="none", marker="o", color=colour[g], label=g) for g in groups]
        if len(curve):
            handles.append(plt.Line2D([], [], linestyle="--", marker=".", color="0.4", label="best-of-N"))
        fig.legend(handles=handles, fontsize=7, frameon=False, loc="center right")
        fig.tight_layout(rect=(0, 0, 0.83, 1))
        save_figure(fig, root / self.path)


@dataclass(frozen=True, eq=False)
class EvidenceSection:
    """## Evidence: the best-of-N ladder, each model against its curve, the judges' and fluency scores."""

    ladder: pd.DataFrame  # the best-of-N rows (empty: none)
    versus: pd.DataFrame  # versus_best_of_n
    judged: pd.DataFrame  # every model's reward beside its judges' and fluency scores (empty: none)
    judges: list[str]
    fluency: bool
    figures: tuple


def score_panels(judges: list[str], fluency: bool) -> tuple[tuple[str, str], ...]:
    """(column, axis label) of each judge's mean reward and of the fluency score: a figure's panels."""
    panels = tuple((f"judge_{j}_reward_mean", f"judge `{j}`: mean reward") for j in judges)
    return panels + ((("fluency", "fluency (mean log-prob per token)"),) if fluency else ())


def evidence_section(summary: pd.DataFrame) -> EvidenceSection | None:
    """The section, or None when the run has no best-of-N, judge or fluency numbers."""
    judges, fluency = judge_names(summary.columns), "fluency" in summary.columns
    ladder = summary[summary.method == BEST_OF_N]
    if ladder.empty and not judges and not fluency:
        return None
    panels = score_panels(judges, fluency)
    figures = (JudgeFigure("plots/judges.png", "training reward vs judges", summary, panels),) if panels else ()
    return EvidenceSection(
        ladder, versus_best_of_n(summary), summary if panels else pd.DataFrame(), judges, fluency, figures
    )
