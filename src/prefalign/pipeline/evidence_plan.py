"""The plan's evidence items: the best-of-N reference and the judges' and fluency model's scores.

From the evaluations plan.py made: one BestOfN beside the original's evaluation (when
`baselines.best_of_n` is set), then one TextScores per (evaluation or BestOfN) x (judge, fluency),
and one TrajectoryScores per (trained model with a training curve) x (judge, fluency).
Every judge and the fluency model is checked here like the reward model (a missing path, a
wrong label, code it would run), so a bad one stops the run before any work.
"""

from __future__ import annotations

from prefalign.config.schema import Config
from prefalign.pipeline.evidence_items import BestOfN, FluencyScorer, Judge, TextScores, TrajectoryScores
from prefalign.pipeline.items import Evaluation, Original, RewardModel
from prefalign.pipeline.logs import log


def judges(cfg: Config, reward: RewardModel) -> list[Judge]:
    """evaluate.judges, checked and identified (a judge that is the reward model is kept: a sanity row)."""
    from prefalign.models.loading import identity
    from prefalign.models.saved import check_saved_model

    out = []
    for i, j in enumerate(cfg.evaluate.judges):
        where = f"evaluate.judges[{i}].model"
        check_saved_model(
            j.model,
            "reward",
            key=where,
            positive_label=j.positive_label,
            single_logit=j.single_logit,
            trust_remote_code=j.trust_remote_code,
        )
        judge = Judge(
            j.name,
            j.model,
            j.revision,
            j.positive_label,
            identity(j.model, j.revision, "reward", where),
            j.single_logit,
            j.trust_remote_code,
            f"evaluate.judges[{i}]",
        )
        if (judge.identity, judge.positive_label, judge.single_logit) == (
            reward.identity,
            reward.positive_label,
            reward.single_logit,
        ):
            log(
                f"note: judge {j.name!r} is the reward model itself: its scores equal the reward (a sanity "
                "row, not evidence)"
            )
        out.append(judge)
    return out


def fluency_scorer(cfg: Config) -> FluencyScorer | None:
    from prefalign.models.loading import identity
    from prefalign.models.saved import check_saved_model

    f = cfg.evaluate.fluency
    if f is None:
        return None
    where = "evaluate.fluency.model"
    check_saved_model(f.model, "policy", trust_remote_code=f.trust_remote_code, key=where)
    return FluencyScorer(
        f.model, f.revision, identity(f.model, f.revision, "policy", where), f.samples, f.threshold, f.trust_remote_code
    )


def evidence_items(
    cfg: Config, evaluations: list[Evaluation], reward: RewardModel
) -> list[BestOfN | TextScores | TrajectoryScores]:
    """The BestOfN item (if any), then every TextScores and TrajectoryScores item, each after its source."""
    sources: list[Evaluation | BestOfN] = list(evaluations)
    out: list[BestOfN | TextScores | TrajectoryScores] = []
    ladder = tuple(cfg.baselines.best_of_n)
    if ladder:
        original = next(e for e in evaluations if isinstance(e.model, Original))
        chosen = min(cfg.baselines.best_of_n_samples or original.samples, original.samples)
        best = BestOfN(original, ladder, chosen, cfg.run_path / "eval" / "best-of-n")
        sources.append(best)
        out.append(best)
    fluency = fluency_scorer(cfg)
    scorers = [*judges(cfg, reward), *filter(None, [fluency])]
    for source in sources:
        for scorer in scorers:
            out.append(TextScores(source, scorer, source.path / scorer.folder))
    along = [s for s in scorers if s is not fluency or cfg.evaluate.fluency.along_training]
    for model in (e.model for e in evaluations if getattr(e.model, "trajectory", None) is not None):
        for scorer in along:
            out.append(TrajectoryScores(model, scorer, model.trajectory.path.parent / scorer.folder / "trajectory.csv"))
    return out
