"""What report.md says, as data: one dataclass per section, built from the run's summaries.

`build_report` turns the Report item (its config, evaluations and iterative chains), the summary
across training seeds (tables.across_seeds) and what the stage read beside the evaluation metrics
(`Inputs`: models.json, the samples' and pairs' metadata, rewards, train.json, example texts) into a
`ReportContent`: the intro, the models, one section per pair strategy, the on-policy and online
models, the frontier (Pareto front, who beats whom, the comparison with `report.baseline`), the
trainings and example texts, each with the figures it shows as specs (plots.py). Pure: nothing
here reads, writes or draws; markdown.py renders the sections, plots.draw_figures draws the figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from prefalign.pipeline.items import DpoModel, IterativeRound, Original, Pairs, Report, RlooModel
from prefalign.report.comparison import Comparison, beaten_by, compare_to_baseline
from prefalign.report.evidence import EvidenceSection, evidence_section
from prefalign.report.plots import (
    DPO_CURVES,
    RLOO_CURVES,
    CurvesFigure,
    Figure,
    FrontierFigure,
    RewardsFigure,
    reward_span,
)
from prefalign.report.tables import pareto_front, strategy_rows
from prefalign.report.trajectories import trajectory_figures

NAN = float("nan")


@dataclass(frozen=True, eq=False)
class Inputs:
    """What the report shows besides the evaluation metrics, as the stage read it."""

    generated: str  # when the report was made, as it says
    models: dict  # models.json's content (services.model_info)
    samples_meta: dict  # the main samples' metadata (every grid pair file draws from them)
    pairs_meta: dict[str, dict]  # pair strategy -> its pair file's metadata
    rewards: dict[str, np.ndarray]  # model -> every reward of every evaluation run (the original and the grid)
    train_info: dict[str, dict]  # trained model -> its train.json
    examples: dict[str, pd.DataFrame]  # model shown in the summary -> its evaluation run 0


@dataclass(frozen=True)
class Intro:
    """The title and what the numbers are: the reward, the metrics, what a cell holds."""

    name: str
    generated: str
    root: str
    single_logit: bool
    positive_label: str
    kl: bool
    runs: int
    samples: int
    repeats: int
    composed: bool = False  # reward.terms: the reward is a weighted sum (ModelsSection.terms)


@dataclass(frozen=True)
class ModelsSection:
    """## Models: the policy, the classifier, the recipe, the prompts and the pair samples."""

    policy: Any
    perplexity: float | None
    reward_model: Any
    accuracy: float | None
    recipe: str
    overrides: dict  # train.dpo
    prompts: dict | None  # sampling.prompts (None: BOS token only)
    pair_samples: Any  # how many texts the pair files draw from ('?' when not recorded)
    pair_reward_mean: float
    # reward.terms: per term its name, type, weight, settings and mean / std over the original's samples
    terms: tuple[dict, ...] = ()
    normalize: bool = False


@dataclass(frozen=True, eq=False)
class PairsSection:
    """## Pairs: one pair strategy's pairs, its table, its reward distributions and training curves."""

    strategy: str
    rule: dict  # the pair rule's own settings
    meta: dict  # the pair file's metadata: pairs, mean_gap, chosen / rejected reward
    rows: pd.DataFrame  # the original, then the DPO grid on these pairs
    rewards: RewardsFigure
    curves: CurvesFigure


@dataclass(frozen=True, eq=False)
class OnlineSection:
    """## On-policy rounds and online RL: the iterative chains and the RLOO models."""

    iterative_strategy: str
    steps: int  # online.steps
    rows: pd.DataFrame
    labels: dict[str, str]  # model -> how its row is named
    curves: tuple[CurvesFigure, ...]


@dataclass(frozen=True, eq=False)
class FrontierSection:
    """## Frontier: the figures, the Pareto front, the comparison with the baseline, who beats whom."""

    figures: tuple  # the FrontierFigures, then with evaluate.during_training the trajectories' (trajectories.py)
    kl: bool
    front: pd.DataFrame  # the Pareto-optimal models
    unreadable: list[str]  # left out of the front and the comparisons
    repeats: int  # train.repeats: which std the comparisons use
    comparison: Comparison | None
    wins: dict[str, list[str]]  # model -> the models it beats


@dataclass(frozen=True)
class TrainingRow:
    """One line of ## Training."""

    model: str
    amount: Any  # pairs (DPO) or steps (RLOO)
    seconds: Any
    pairs_per_second: Any
    final_loss: float


@dataclass(frozen=True)
class Examples:
    """One model group's example texts."""

    model: str
    picks: list[tuple[float, str]]  # (reward, prompt + text): the highest, median and lowest of run 0


@dataclass(frozen=True, eq=False)
class ReportContent:
    """The whole report, section by section."""

    title: str
    intro: Intro
    models: ModelsSection
    pairs: tuple[PairsSection, ...]
    online: OnlineSection | None
    frontier: FrontierSection
    training: tuple[TrainingRow, ...]
    examples: tuple[Examples, ...]
    evidence: EvidenceSection | None = None

    def figures(self) -> list[Figure]:
        """Every figure the report shows, in its order."""
        pairs = [figure for section in self.pairs for figure in (section.rewards, section.curves)]
        evidence = list(self.evidence.figures) if self.evidence else []
        return pairs + list(self.online.curves if self.online else ()) + list(self.frontier.figures) + evidence


def grid_of(item: Report) -> list[DpoModel]:
    """The DPO grid (train.losses x train.betas x pair strategies, train.extra): not iterative rounds."""
    return [e.model for e in item.evaluations if type(e.model) is DpoModel]


def pair_files(item: Report) -> list[Pairs]:
    """The main pair files, one per strategy the grid trains on, in the grid's order."""
    return list({model.pairs.key: model.pairs for model in grid_of(item)}.values())


def intro(item: Report, summary: pd.DataFrame, inputs: Inputs) -> Intro:
    cfg = item.config
    return Intro(
        cfg.name,
        inputs.generated,
        str(item.path.parent),
        cfg.reward.single_logit,
        cfg.reward.positive_label,
        "kl_seq" in summary.columns,
        cfg.evaluate.runs,
        cfg.evaluate.samples,
        cfg.train.repeats,
        bool(cfg.reward.terms),
    )


def models_section(item: Report, inputs: Inputs) -> ModelsSection:
    cfg, policy, reward = item.config, inputs.models.get("policy", {}), inputs.models.get("reward_model", {})
    return ModelsSection(
        policy.get("ref", cfg.policy.model),
        policy.get("perplexity"),
        reward.get("ref", cfg.reward.model),
        reward.get("accuracy"),
        cfg.train.recipe,
        cfg.train.dpo,
        None if cfg.sampling.prompts is None else cfg.sampling.prompts.model_dump(),
        inputs.samples_meta.get("samples", "?"),
        inputs.samples_meta.get("reward_mean", NAN),
        tuple(_term_row(t, inputs.samples_meta.get("term_stats", {})) for t in cfg.reward.terms),
        cfg.reward.normalize,
    )


def _term_row(term, stats: dict) -> dict:
    """One reward term as the report lists it: its settings and its mean / std over the original's samples."""
    settings = term.model_dump(exclude={"name", "type", "weight"}, exclude_defaults=True)
    own = stats.get(term.label, {})
    return dict(
        name=term.label,
        type=term.type,
        weight=term.weight,
        settings=settings,
        mean=own.get("mean", NAN),
        std=own.get("std", NAN),
    )


def group_rewards(item: Report, inputs: Inputs) -> dict[str, np.ndarray]:
    """Rewards by model group: the original's, and each grid model's repeats pooled."""
    rewards = {"original": inputs.rewards["original"]}
    for model in grid_of(item):
        rewards[model.group] = np.concatenate([rewards.get(model.group, []), inputs.rewards[model.name]])
    return rewards


def dpo_models(item: Report) -> tuple:
    """Every DPO-trained model, iterative rounds included: their training figures share y ranges."""
    return tuple(e.model for e in item.evaluations if isinstance(e.model, DpoModel))


def pairs_sections(item: Report, summary: pd.DataFrame, inputs: Inputs) -> list[PairsSection]:
    """One section per pair strategy: its pairs, its table, its reward distributions and training curves."""
    grid, rewards, shared = grid_of(item), group_rewards(item, inputs), dpo_models(item)
    span = reward_span(rewards.values())  # every reward figure shares it
    sections = []
    for pairs in pair_files(item):
        strategy, trained = pairs.strategy, [model for model in grid if model.pairs is pairs]
        names = ["original"] + list(dict.fromkeys(model.group for model in trained))
        shown = RewardsFigure(
            f"plots/rewards-{strategy}.png",
            f"reward distributions, {strategy} pairs",
            f"reward distributions, {strategy} pairs",
            {name: rewards[name] for name in names},
            span,
        )
        curves = CurvesFigure(
            f"plots/training-{strategy}.png",
            f"training curves, {strategy} pairs",
            f"training, {strategy} pairs",
            tuple(trained),
            shared=shared,
        )
        rows = strategy_rows(summary, strategy)
        sections.append(PairsSection(strategy, pairs.rule, inputs.pairs_meta[strategy], rows, shown, curves))
    return sections


def online_labels(item: Report, summary: pd.DataFrame) -> dict[str, str]:
    """model -> its row's name in the online table: the original, each iterative chain (round 1,
    its grid model, first), then the RLOO models."""
    labels = {"original": "original model"}
    labels.update(
        {
            model.group: f"{model.group} (round 1 of iter-{model.group})" if type(model) is DpoModel else model.group
            for chain in item.chains
            for model in chain
        }
    )
    labels.update({name: name for name in summary[summary.method == "rloo"].model})
    return labels


def online_section(item: Report, summary: pd.DataFrame) -> OnlineSection | None:
    """Iterative rounds and RLOO models with their training curves; None when the run has neither."""
    labels = online_labels(item, summary)
    if len(labels) == 1:
        return None
    rows = summary.set_index("model").loc[list(labels)].reset_index()
    rounds = tuple(e.model for e in item.evaluations if type(e.model) is IterativeRound)
    rloo = tuple(e.model for e in item.evaluations if type(e.model) is RlooModel)
    kinds = (("iterative", rounds, DPO_CURVES, dpo_models(item)), ("rloo", rloo, RLOO_CURVES, ()))
    curves = tuple(
        CurvesFigure(
            f"plots/training-{name}.png", f"training curves, {name}", f"training, {name}", models, panels, shared
        )
        for name, models, panels, shared in kinds
        if models
    )
    cfg = item.config
    return OnlineSection(cfg.iterative.strategy, cfg.online.steps, rows, labels, curves)


# The frontier figures: (summary column on x, its axis label, symlog x axis).
FRONTIERS = (
    ("diversity", "diversity (unigram entropy, nats)", False),
    ("kl_seq", "KL(policy || original), nats per text (symlog scale)", True),
)


def frontier_section(item: Report, summary: pd.DataFrame) -> FrontierSection:
    """The frontier figures, the Pareto front, the comparison with the baseline (KL measured) and who beats whom."""
    kl = "kl_seq" in summary.columns
    figures = tuple(
        FrontierFigure(f"plots/frontier-reward-vs-{x.split('_')[0]}.png", f"reward vs {x}", summary, x, xlabel, log_x)
        for x, xlabel, log_x in FRONTIERS
        if x in summary.columns
    ) + trajectory_figures(item, summary)
    front, unreadable = pareto_front(summary)
    comparison = compare_to_baseline(summary, item.config.report.baseline) if kl else None
    return FrontierSection(figures, kl, front, unreadable, item.config.train.repeats, comparison, beaten_by(summary))


def training_rows(item: Report, inputs: Inputs) -> list[TrainingRow]:
    """One row per trained model: pairs (or steps), seconds, pairs/s and the last logged loss."""
    rows = []
    for model in (e.model for e in item.evaluations if not isinstance(e.model, Original)):
        info = inputs.train_info.get(model.name, {})
        losses = [h["loss"] for h in info.get("log_history", []) if "loss" in h]
        rows.append(
            TrainingRow(
                model.name,
                info.get("pairs", info.get("steps", "?")),
                info.get("train_seconds", "?"),
                info.get("pairs_per_second", ""),
                losses[-1] if losses else NAN,
            )
        )
    return rows


def examples(summary: pd.DataFrame, inputs: Inputs) -> list[Examples]:
    """Each model group's highest, median and lowest reward text of evaluation run 0 (its first repeat's)."""
    out = []
    for name in summary.model:
        df = inputs.examples[name].sort_values("reward", kind="stable")
        full = (df["prompt"] + df["text"]) if "prompt" in df.columns else df["text"]
        picks = [len(df) - 1, len(df) // 2, 0] if len(df) else []
        out.append(Examples(name, list(zip(df.reward.iloc[picks], full.iloc[picks]))))
    return out


def build_report(item: Report, summary: pd.DataFrame, inputs: Inputs) -> ReportContent:
    """The report's content from the summary across training seeds and what the stage read."""
    return ReportContent(
        f"prefalign report: {item.config.name}",
        intro(item, summary, inputs),
        models_section(item, inputs),
        tuple(pairs_sections(item, summary, inputs)),
        online_section(item, summary),
        frontier_section(item, summary),
        tuple(training_rows(item, inputs)),
        tuple(examples(summary, inputs)),
        evidence_section(summary),
    )
