"""The work items that judge models beyond their own reward (see config/evidence.py).

    BestOfN(original evaluation)   best-of-N policies of the original, one pool per run -> stages/best_of_n.py
    TextScores(source, scorer)     a judge's or the fluency model's scores of the texts
                                   of an Evaluation or of a BestOfN's choices            -> stages/judge.py
    TrajectoryScores(model, scorer)  the same scorer's scores of the texts of a trained
                                   model's training-curve points (evaluate.during_training) -> stages/judge.py

BestOfN and TextScores keep one output per evaluation run with its own key (run-<k>.json), so an
interrupted run resumes at the first unfinished one; TrajectoryScores one per model. Adding a judge
to a finished run scores only what is new: the evaluations' and trajectories' keys do not depend on
the judges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from prefalign.config.schema import SamplingConfig
from prefalign.pipeline.items import DpoModel, Evaluation, Original, RewardModel, RlooModel, _row, sampler_settings
from prefalign.pipeline.store import is_done, key_of


def best_of_n_kl(n: int) -> float:
    """The standard KL value of a best-of-n policy against its base: log n - (n-1)/n nats (Stiennon
    et al. 2020), an upper bound on the true KL (Beirami et al. 2024)."""
    return math.log(n) - (n - 1) / n


def pool_seed(run_seed: int) -> int:
    """The sampling seed of a best-of-N pool's draws 1.. (draw 0 is the original's evaluation run)."""
    return int(key_of("best-of-n pool", run_seed)[:8], 16)


class _PerRun:
    """An item whose outputs are one `run-<k>.json` per evaluation run, each holding run k's key."""

    runs: int
    path: Path

    def run_path(self, k: int, suffix: str) -> Path:
        return self.path / f"run-{k:02d}{suffix}"

    def run_key(self, k: int) -> str:
        raise NotImplementedError

    @property
    def key(self) -> str:
        return key_of(type(self).__name__, [self.run_key(k) for k in range(self.runs)])

    def markers(self) -> list[tuple[Path, str]]:
        return [(self.run_path(k, ".json"), self.run_key(k)) for k in range(self.runs)]

    def run_done(self, k: int) -> bool:
        return is_done(self.run_path(k, ".json"), self.run_key(k))


@dataclass(frozen=True)
class BestOfN(_PerRun):
    """Best-of-N policies of the original, for every N of `ladder`, evaluated like any model.

    Run k's pool is `max(ladder)` draws of `chosen` texts: draw 0 is the first `chosen` texts of
    the original's evaluation run k; draws 1.. are sampled in one pass with pool_seed(seed + k), draw
    j's row i from row i's prompt. Best-of-N keeps, for each row, the draw with the highest reward among draws
    0..N-1 (the first such draw on a tie), so the ladder's policies share one pool.
    """

    evaluation: Evaluation  # the original's evaluation: its runs are the pool's draw 0
    ladder: tuple[int, ...]
    chosen: int  # texts per run of every best-of-N policy
    path: Path  # eval/best-of-n/: run-<k>-pool.parquet (+ .json), run-<k>-choices.parquet, run-<k>.json

    name = "best-of-N"
    stage = "evaluate"

    @property
    def original(self) -> Original:
        return self.evaluation.model

    @property
    def reward(self) -> RewardModel:
        return self.evaluation.reward

    @property
    def sampling(self) -> SamplingConfig:
        return self.evaluation.sampling

    @property
    def runs(self) -> int:
        return self.evaluation.runs

    @property
    def draws(self) -> int:
        return max(self.ladder)

    def run_seed(self, k: int) -> int:
        return self.evaluation.seed + k

    def pool_key(self, k: int) -> str:
        """What run k's pool depends on (run-<k>-pool.json holds it: other settings sample it again)."""
        return key_of(
            "best-of-n pool",
            self.original.key,
            self.reward.scores_key,  # reward.terms' weights only change the choice, not the pool
            sampler_settings(self.sampling),
            self.evaluation.samples,
            self.chosen,
            self.draws,
            self.run_seed(k),
        )

    def run_key(self, k: int) -> str:
        weights = [("reward", self.reward.key)] if self.reward.terms else []  # the choice follows the weighted sum
        return key_of("best-of-n", self.evaluation.run_key(k), self.pool_key(k), self.ladder, *weights)

    @property
    def inputs(self) -> tuple:
        return (self.evaluation,)

    def model_name(self, n: int) -> str:
        return f"best-of-{n}"

    def row(self, n: int) -> dict:
        row = _row(self, "best_of_n")
        return {**row, "model": self.model_name(n), "group": self.model_name(n), "best_of": n}


@dataclass(frozen=True)
class Judge:
    """A classifier that scores texts but is never trained on (evaluate.judges entry)."""

    name: str
    ref: str
    revision: str | None
    positive_label: str
    identity: str
    single_logit: bool = False
    trust_remote_code: bool = False
    section: str = "evaluate.judges"  # the config section its messages name (evaluate.judges[i])

    kind = "judge"

    @property
    def key(self) -> str:
        # The name too: two judges of one model under two names are two items (two folders, two columns).
        return key_of("judge", self.name, self.identity, "single-logit" if self.single_logit else self.positive_label)

    @property
    def folder(self) -> str:
        return f"judge-{self.name}"


@dataclass(frozen=True)
class FluencyScorer:
    """A causal LM that scores how fluent texts are (evaluate.fluency)."""

    ref: str
    revision: str | None
    identity: str
    samples: int | None  # texts per run: the first this many (None: all)
    threshold: float  # fluency below it counts as not fluent
    trust_remote_code: bool = False

    kind = "fluency"
    name = "fluency"
    folder = "fluency"

    @property
    def key(self) -> str:
        return key_of("fluency", self.identity, self.samples, self.threshold)


@dataclass(frozen=True)
class TextScores(_PerRun):
    """`scorer`'s scores of every text of `source` (an Evaluation, or a BestOfN's choices), per run."""

    source: Evaluation | BestOfN
    scorer: Judge | FluencyScorer
    path: Path  # <source dir>/judge-<name>/ or <source dir>/fluency/: run-<k>.parquet and run-<k>.json

    stage = "evaluate"

    @property
    def runs(self) -> int:
        return self.source.runs

    @property
    def name(self) -> str:
        source = self.source.model.name if isinstance(self.source, Evaluation) else self.source.name
        return f"{self.scorer.name} scores of {source}"

    def run_key(self, k: int) -> str:
        return key_of("scores", self.source.run_key(k), self.scorer.key)

    @property
    def inputs(self) -> tuple:
        return (self.source,)


@dataclass(frozen=True)
class TrajectoryScores:
    """`scorer`'s scores of the texts of every training-curve point of `model` (its
    eval/<model>/trajectory-texts.parquet), a row per point."""

    model: DpoModel | RlooModel  # a trained model with evaluate.during_training (an IterativeRound is a DpoModel)
    scorer: Judge | FluencyScorer
    path: Path  # eval/<model>/judge-<name>/trajectory.csv (or fluency/); trajectory.json beside it

    stage = "evaluate"

    @property
    def name(self) -> str:
        return f"{self.scorer.name} scores of {self.model.name}'s training curve"

    @property
    def meta(self) -> Path:
        return self.path.with_name("trajectory.json")

    @property
    def trajectory_key(self) -> str:
        return self.model.trajectory.key(self.model.key)

    @property
    def key(self) -> str:
        return key_of("trajectory scores", self.trajectory_key, self.scorer.key)

    @property
    def inputs(self) -> tuple:
        return (self.model,)

    def markers(self) -> list[tuple[Path, str]]:
        return [(self.meta, self.key)]
