"""Who beats whom, and the comparison against a baseline group of models (`report.baseline`).

One summary row beats another when its texts are text (`tables.readable`) and it leads on reward
and diversity, and on KL when measured (lower), each by more than the larger of the two rows'
stds. The baseline is a group of models named in the config: a recipe (the DPO models trained with
it, e.g. `seed`, the original experiment's settings) or a method (`dpo`, `iterative`, `rloo`); its
challengers are every other trained model. The comparison says which challengers beat every
baseline model and, when none does, which comes closest. Pure: summary rows in, answers out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from prefalign.config.recipes import RECIPE_NAMES
from prefalign.report.tables import readable

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


def baseline_and_challengers(summary: pd.DataFrame, baseline: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The baseline's models and their challengers (every other trained model). A recipe names the
    DPO models trained with it (the grid and train.extra), whose challengers are the models of other
    recipes and methods; a method names its models, whose challengers are the other methods' models."""
    trained = ~summary.method.isin(["original", "best_of_n"])  # best-of-N policies are references, not trained
    if baseline in RECIPE_NAMES:
        return summary[(summary.method == "dpo") & (summary.recipe == baseline)], summary[
            (summary.recipe != baseline) & trained
        ]
    return summary[summary.method == baseline], summary[(summary.method != baseline) & trained]


def smallest_leads(r, base: pd.DataFrame) -> dict[str, tuple[float, str]]:
    """axis -> (row `r`'s smallest net lead over the rows of `base` (see `net_leads`), the model it is against)."""
    leads = {s.model: net_leads(r, s) for _, s in base.iterrows()}
    return {axis: min((lead[axis], model) for model, lead in leads.items()) for axis in next(iter(leads.values()))}


def beats_baseline(summary: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """The challengers that beat every model of `baseline` on reward and diversity, with lower KL,
    each by more than the larger of the two models' stds."""
    base, others = baseline_and_challengers(summary, baseline)
    rows = [r for _, r in others.iterrows() if len(base) and all(beats(r, s) for _, s in base.iterrows())]
    return pd.DataFrame(rows)


def closest_to_baseline(summary: pd.DataFrame, baseline: str) -> tuple[pd.Series, int, dict] | None:
    """The readable challenger that comes closest to beating every model of `baseline`: the one
    beating the most of them, then the one with the smallest shortfall (in units of the baseline
    models' spread on each axis). Returns (its row, how many it beats, `smallest_leads` of it); None
    without baseline models or challengers."""
    base, challengers = baseline_and_challengers(summary, baseline)
    others = [r for _, r in challengers.iterrows() if readable(r)]
    if base.empty or not others:
        return None
    spread = {name: float(np.ptp(base[col])) or 1.0 for name, col, _ in AXES if col in summary.columns}

    def standing(r):
        worst = smallest_leads(r, base)
        shortfall = sum(min(lead, 0.0) / spread[axis] for axis, (lead, _) in worst.items())
        return sum(beats(r, s) for _, s in base.iterrows()), shortfall, worst

    best, (wins, _, worst) = max(((r, standing(r)) for r in others), key=lambda pair: pair[1][:2])
    return best, wins, worst


@dataclass(frozen=True)
class Closest:
    """The challenger closest to beating every baseline model, when none beats them all."""

    model: str
    wins: int  # how many baseline models it beats
    worst: dict[str, tuple[float, str]]  # axis -> (its smallest net lead, the baseline model it is against)


@dataclass(frozen=True)
class Comparison:
    """The report's answer to "does a challenger beat every model of the baseline?"."""

    baseline: str  # report.baseline
    is_recipe: bool  # a recipe's models (else a method's)
    models: int  # how many baseline models the run has
    better: list[str]  # the challengers beating every one of them
    closest: Closest | None  # when none does: the one coming closest (None: no readable challenger)


def compare_to_baseline(summary: pd.DataFrame, baseline: str | None) -> Comparison | None:
    """The comparison with the models of `baseline`; None without a baseline or without its models in the run."""
    if not baseline:
        return None
    base = baseline_and_challengers(summary, baseline)[0]
    if base.empty:
        return None
    better = list(beats_baseline(summary, baseline).get("model", []))
    found = None if better else closest_to_baseline(summary, baseline)
    closest = Closest(found[0].model, found[1], found[2]) if found else None
    return Comparison(baseline, baseline in RECIPE_NAMES, len(base), better, closest)
