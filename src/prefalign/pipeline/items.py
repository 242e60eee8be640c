"""The experiment's work items: typed, frozen descriptions of every output a run makes.

Each item holds its inputs (the items it reads), its settings, its output `path` and a cache `key`:
a hash of its own settings and its inputs' keys, so a key changes exactly when something that
changes the output changes, and everything downstream changes with it. plan.py builds them from a
config; runner.py makes each with one stage function.

    Samples(policy)          texts sampled from a policy, scored    -> stages/sample.py
    Pairs(samples)           chosen/rejected pairs under one rule   -> stages/pairs.py
    DpoModel(pairs, start)   DPO from `start` on the pairs          -> stages/train_dpo.py
    IterativeRound           a DpoModel trained on pairs of its parent model's own samples
    RlooModel                online RL from the original            -> stages/train_rloo.py
    Evaluation(model)        seeded evaluation runs of one model    -> stages/evaluate.py
    Report(evaluations)      results.csv, report.md, plots          -> stages/report.py
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from prefalign.config.schema import Config, SamplingConfig
from prefalign.config.train import LossMix, loss_label
from prefalign.pipeline.reward_model import RewardModel
from prefalign.pipeline.store import is_done, key_of
from prefalign.pipeline.trajectory import TrainedMarkers, Trajectory

# The columns that describe a model in results.csv, before `run` and the metrics.
# `group`: the model's name without its training-seed suffix; `best_of`: N of a best-of-N policy.
RESULT_COLUMNS = ("model", "group", "method", "strategy", "loss", "beta", "recipe", "round", "kl_coef")
RESULT_COLUMNS += ("training_seed", "best_of")
# Part of every evaluation's key: raised when a metric's definition changes or one is added, so
# stored evaluations are redone.
METRICS_VERSION = "metrics-v3"
# Part of the report's key: raised when what the report writes changes, so finished runs get the new report.
REPORT_VERSION = "report-v12"


def _row(
    model, method: str, strategy: str = "", loss: str = "", beta=None, recipe: str = "", round=None, kl_coef=None
) -> dict:
    """A model's describing columns of results.csv, in RESULT_COLUMNS order."""
    seed, group = getattr(model, "seed", None), getattr(model, "group", model.name)
    values = (model.name, group, method, strategy, loss, beta, recipe, round, kl_coef, seed, None)
    return dict(zip(RESULT_COLUMNS, values, strict=True))


def sampler_settings(sampling: SamplingConfig) -> dict:
    """The sampling settings that change which texts a seed gives (everything but count and seed),
    with a local prompt corpus's identity: editing the file redoes what was sampled from it."""
    from prefalign.data.corpus import CorpusPathError, corpus_identity

    settings = sampling.model_dump(exclude={"num_samples", "seed"})
    try:
        identity = corpus_identity(sampling.prompts.corpus) if sampling.prompts is not None else None
    except CorpusPathError as e:
        raise CorpusPathError(f"sampling.prompts.corpus: {e}") from None
    if identity is not None:
        settings["prompts"]["corpus_identity"] = identity
    if settings["prompts"] is not None and settings["prompts"].get("subset") is None:
        del settings["prompts"]["subset"]  # empty, it leaves the keys of runs made before it existed
    return settings


def samples_texts_key(policy_key: str, scores_key: str, sampling: SamplingConfig, count: int, seed: int) -> str:
    """Samples.texts_key (a function: the plan needs the original's before its Samples item exists)."""
    return key_of("samples", policy_key, scores_key, sampler_settings(sampling), count, seed)


def seed_suffix(seed: int, repeat: int) -> str:
    """What follows a trained model's group name: nothing for its first training seed, `-seed<s>` after."""
    return f"-seed{seed}" if repeat else ""


def dpo_name(strategy: str, loss, beta: float, recipe: str) -> str:
    """A DPO model's name: its directory under models/ and its row in the results."""
    return f"{strategy}-{loss_label(loss)}-beta{beta:g}-{recipe}"


# ---- models ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Original:
    """The policy as configured: where every chain starts and the reference of every model."""

    ref: str
    revision: str | None
    identity: str  # models.loading.identity(ref, revision): changes when the weights behind `ref` change
    trust_remote_code: bool = False  # policy.trust_remote_code; not in the key (the same model either way)

    name = "original"
    stage = None  # nothing to do: it exists already

    @property
    def key(self) -> str:
        return self.identity

    def row(self) -> dict:
        return _row(self, "original")


@dataclass(frozen=True)
class DpoModel(TrainedMarkers):
    """A policy trained with TRL's DPOTrainer from `start` on one pair file, against `reference`."""

    pairs: Pairs
    start: Policy
    reference: Original
    loss: str | LossMix  # a train.losses entry
    beta: float
    recipe: str
    overrides: dict[str, Any]  # train.dpo
    seed: int
    slic_sft_weight: float
    precision: str | None  # train.precision (None: the recipe's)
    path: Path  # the model directory; train.json in it holds the key
    # train.checkpoint_steps: how often a resumable checkpoint is saved; not in the key (same result)
    checkpoint_steps: int | None = None
    lora: dict[str, Any] | None = None  # train.lora: LoRA adapters instead of full training
    repeat: int = 0  # which of train.repeats (its seed is in `seed`); names only
    trajectory: Trajectory | None = None  # evaluate.during_training; not in the key, one of the markers

    stage = "train"
    revision = None  # a trained model loads from its directory (`ref`)

    @property
    def ref(self) -> str:
        return str(self.path)

    @property
    def loss_label(self) -> str:
        return loss_label(self.loss)

    @property
    def group(self) -> str:
        return dpo_name(self.pairs.strategy, self.loss, self.beta, self.recipe)

    @property
    def name(self) -> str:
        return self.group + seed_suffix(self.seed, self.repeat)

    @property
    def key(self) -> str:
        if self.loss == "slic":
            loss = ("slic", self.slic_sft_weight)
        else:
            loss = self.loss if isinstance(self.loss, str) else self.loss.model_dump()
        sources = (self.pairs.key, self.start.key, self.reference.key)
        parts = ["dpo", *sources, loss, self.beta, self.recipe, self.overrides, self.seed, self.precision]
        return key_of(*parts, *([("lora", self.lora)] if self.lora else []))

    @property
    def inputs(self) -> tuple:
        return (self.pairs, self.start)

    def row(self) -> dict:
        return _row(self, "dpo", self.pairs.strategy, self.loss_label, self.beta, self.recipe)


@dataclass(frozen=True)
class IterativeRound(DpoModel):
    """Round `round` (>= 2) of an iterative chain: DPO from the previous round's model (`start`) on
    pairs of that model's own samples, the reference still the original."""

    chain: str = ""
    round: int = 2

    @property
    def group(self) -> str:
        return f"{self.chain}-r{self.round}"

    def row(self) -> dict:
        return _row(self, "iterative", self.pairs.strategy, self.loss_label, self.beta, self.recipe, self.round)


@dataclass(frozen=True)
class RlooModel(TrainedMarkers):
    """A policy trained online with TRL's RLOOTrainer from the original, the classifier as reward."""

    start: Original
    reward: RewardModel
    kl_coef: float
    steps: int
    overrides: dict[str, Any]  # online.rloo
    sampling: SamplingConfig  # its completions follow the sampler's settings
    seed: int
    path: Path
    repeat: int = 0  # which of train.repeats (its seed is in `seed`); names only
    trajectory: Trajectory | None = None  # evaluate.during_training; not in the key, one of the markers

    stage = "train"
    revision = None

    @property
    def ref(self) -> str:
        return str(self.path)

    @property
    def group(self) -> str:
        return f"rloo-kl{self.kl_coef:g}"

    @property
    def name(self) -> str:
        return self.group + seed_suffix(self.seed, self.repeat)

    @property
    def key(self) -> str:
        return key_of(
            "rloo",
            self.start.key,
            self.reward.key,
            self.kl_coef,
            self.steps,
            self.overrides,
            sampler_settings(self.sampling),
            self.seed,
        )

    @property
    def inputs(self) -> tuple:
        return ()

    def row(self) -> dict:
        return _row(self, "rloo", kl_coef=self.kl_coef)


Policy = Union[Original, DpoModel, IterativeRound, RlooModel]
# The models a run trains (each with a directory of its own); an IterativeRound is a DpoModel.
TRAINED = (DpoModel, RlooModel)


def trusts_code(policy: Policy) -> bool:
    """Whether loading `policy` may run its checkpoint's own code: the original's setting, for it and
    every model trained from it (their directories carry its code, saved with the weights)."""
    if isinstance(policy, Original):
        return policy.trust_remote_code
    return (policy.reference if isinstance(policy, DpoModel) else policy.start).trust_remote_code


class _MetaBeside:
    """An item with one output file and, beside it, `<name>.meta.json` holding its key (written last)."""

    @property
    def meta(self) -> Path:
        """The metadata file beside the output: its key and summary, written last."""
        return self.path.with_suffix(".meta.json")

    def markers(self) -> list[tuple[Path, str]]:
        return [(self.meta, self.key)]


# ---- data --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Samples(_MetaBeside):
    """`count` texts sampled from `policy` under `seed`, each scored by `reward`."""

    policy: Policy
    reward: RewardModel
    sampling: SamplingConfig
    count: int
    seed: int
    path: Path  # samples.parquet; samples.meta.json beside it holds the key

    stage = "sample"

    @property
    def name(self) -> str:
        return "samples" if isinstance(self.policy, Original) else f"samples of {self.policy.name}"

    @property
    def key(self) -> str:
        return key_of(
            "samples", self.policy.key, self.reward.key, sampler_settings(self.sampling), self.count, self.seed
        )

    @property
    def texts_key(self) -> str:
        """What the texts and their term values depend on: the key but for the terms' weights (equal to
        the key without reward.terms). Stored samples with this key are re-weighed, not sampled again."""
        return samples_texts_key(self.policy.key, self.reward.scores_key, self.sampling, self.count, self.seed)

    @property
    def inputs(self) -> tuple:
        return () if isinstance(self.policy, Original) else (self.policy,)


@dataclass(frozen=True)
class Pairs(_MetaBeside):
    """`count` chosen/rejected pairs drawn from `samples` by the pair rule `strategy`."""

    samples: Samples
    strategy: str
    rule: dict[str, Any]  # the rule's own settings (PairsConfig.rule)
    count: int
    seed: int
    path: Path  # <name>.parquet; <name>.meta.json beside it holds the key

    stage = "pairs"

    @property
    def name(self) -> str:
        return f"pairs {self.strategy}" + (
            "" if isinstance(self.samples.policy, Original) else f" of {self.samples.policy.name}"
        )

    @property
    def key(self) -> str:
        return key_of("pairs", self.samples.key, self.strategy, self.rule, self.count, self.seed)

    @property
    def inputs(self) -> tuple:
        return (self.samples,)


@dataclass(frozen=True)
class Evaluation:
    """`runs` evaluation runs of `model`: run k samples `samples` texts with seed `seed + k`."""

    model: Policy
    reward: RewardModel
    reference: Original  # KL is measured against it
    sampling: SamplingConfig
    runs: int
    samples: int
    seed: int
    kl: bool
    reward_thresholds: tuple[float, ...]
    path: Path  # eval/<model>/: run-<k>.parquet and run-<k>.json (which holds run k's key)

    stage = "evaluate"

    @property
    def name(self) -> str:
        return f"evaluate {self.model.name}"

    def run_key(self, k: int) -> str:
        return self._run_key(k, self.reward.key)

    def run_texts_key(self, k: int) -> str:
        """Run k's key but for the reward terms' weights: a stored run with it is re-weighed, not sampled."""
        return self._run_key(k, self.reward.scores_key)

    def _run_key(self, k: int, reward_key: str) -> str:
        return key_of(
            "eval",
            self.model.key,
            reward_key,
            self.reference.key,
            sampler_settings(self.sampling),
            self.samples,
            self.seed + k,
            self.kl,
            self.reward_thresholds,
            METRICS_VERSION,
        )

    def run_path(self, k: int, suffix: str) -> Path:
        return self.path / f"run-{k:02d}{suffix}"

    @property
    def key(self) -> str:
        return key_of("evaluation", [self.run_key(k) for k in range(self.runs)])

    @property
    def inputs(self) -> tuple:
        return () if isinstance(self.model, Original) else (self.model,)

    def markers(self) -> list[tuple[Path, str]]:
        return [(self.run_path(k, ".json"), self.run_key(k)) for k in range(self.runs)]

    def run_done(self, k: int) -> bool:
        """Whether run k's metrics hold its key and its texts are on disk (deleting a run's parquet
        file, e.g. a damaged one, makes the run again)."""
        return is_done(self.run_path(k, ".json"), self.run_key(k)) and self.run_path(k, ".parquet").exists()


@dataclass(frozen=True)
class Report(_MetaBeside):
    """results.csv, summary.csv, report.md, report.html and the plots, from every evaluation."""

    evaluations: tuple[Evaluation, ...]
    chains: tuple[tuple[DpoModel, ...], ...]  # each iterative chain, round 1 first
    config: Config  # what the report's text describes
    path: Path  # report.md; report.meta.json beside it holds the key
    evidence: tuple = ()  # the BestOfN, TextScores and TrajectoryScores items (evidence_items.py) it reads

    name = "report"
    stage = "report"

    @property
    def key(self) -> str:
        # report.baseline `seed` (what every report compared with before the setting existed) keeps earlier keys
        compared = [] if self.config.report.baseline == "seed" else [("baseline", self.config.report.baseline)]
        traced = [
            m.trajectory.key(m.key) for m in (e.model for e in self.evaluations) if getattr(m, "trajectory", None)
        ]
        compared += [("trajectories", traced)] if traced else []  # evaluate.during_training: the curves it draws
        compared += [("evidence", [x.key for x in self.evidence])] if self.evidence else []
        return key_of("report", REPORT_VERSION, self.config.name, [e.key for e in self.evaluations], *compared)

    @property
    def inputs(self) -> tuple:
        return self.evaluations + self.evidence


Item = Union[Samples, Pairs, DpoModel, IterativeRound, RlooModel, Evaluation, Report]
