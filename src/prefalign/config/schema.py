"""The experiment config's schema: typed sections, every field with a default and help text.

`prefalign config-help` prints them; configfile.py reads YAML into them; the `train` section lives
in train_config.py. Validators check what can be checked before anything runs (names of TRL config
fields and their types, through trainer_fields.py; pair rule settings; loss / setting combinations
TRL would reject later), so a bad config fails in a second, not after sampling.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from prefalign.config.evidence import BaselinesConfig, DuringTrainingConfig, FluencyConfig, JudgeConfig, unique_judges
from prefalign.config.recipes import RECIPE_NAMES
from prefalign.config.reward_terms import RewardTerm, check_terms
from prefalign.config.section import Section, label_name
from prefalign.config.train import ExtraPoint, LossMix, TrainConfig
from prefalign.config.trainer_fields import check_loss, dpo_fields, trainer_fields
from prefalign.engine.pair_rules import PAIR_RULES
from prefalign.models.specs import builtin_checked


def own_code_field(what: str):
    """`policy.trust_remote_code` / `reward.trust_remote_code`."""
    return Field(
        False,
        description="Run the modelling code a checkpoint ships with (its config's `auto_map`: "
        f"transformers' `trust_remote_code`), for {what}. Only for checkpoints whose code you have read or "
        "trust: it runs with your permissions. Off: such a checkpoint is refused while planning.",
    )


class PolicyConfig(Section):
    model: str = Field(
        "lvwerra/gpt2-imdb",
        description="Causal LM to align: a Hugging Face hub id, a local directory saved with "
        "`save_pretrained`, or a model prefalign builds itself (`prefalign:tiny`).",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) of `model`.")
    trust_remote_code: bool = own_code_field("the policy, its tokenizer and every model trained from it")

    @field_validator("model")
    @classmethod
    def _a_policy(cls, v: str) -> str:
        return builtin_checked(v, "policy")


class RewardConfig(Section):
    model: str = Field(
        "lvwerra/distilbert-imdb",
        description="Sequence classifier whose positive-class logit is the reward: hub id, local "
        "directory or `prefalign:tiny`.",
    )
    revision: str | None = Field(None, description="Hub revision of `model`.")
    positive_label: str = Field(
        "POSITIVE",
        description="Name of the positive class in the classifier's `config.id2label`. Looked up by "
        "name, never by index, because label order differs between checkpoints.",
    )
    batch_size: int | None = Field(
        None,
        gt=0,
        description="Texts per classifier batch (length-sorted). Empty: 128 on CPU; on a GPU as many as fit "
        "65,536 tokens, at most 1,024.",
    )
    single_logit: bool = Field(
        False,
        description="The classifier has one output and that logit is the reward (positive: logit > 0, positive "
        "probability: its sigmoid; `positive_label` is then not used). Without it a one-output classifier is "
        "refused: a positive rate needs two classes.",
    )
    trust_remote_code: bool = own_code_field("the classifier and its tokenizer")
    terms: list[RewardTerm] = Field(
        default_factory=list,
        description="A reward composed of weighted terms (`classifier`, `length`, `fluency`, `broken`; "
        'docs/guide.md, "Composed rewards"): each term\'s value is stored as column reward_<name> and `reward` is '
        "their weighted sum, which pairs, iterative rounds, best-of-N and RLOO use. Empty: reward.model's positive "
        "logit alone.",
    )
    normalize: bool = Field(
        False,
        description="With `terms`: standardise each term (minus its mean, over its std, both on the original's "
        "samples, samples.parquet) before weighting, so weights compare terms of different scales.",
    )

    @field_validator("model")
    @classmethod
    def _a_builtin_or_other(cls, v: str) -> str:
        return builtin_checked(v, "reward")

    @model_validator(mode="after")
    def _terms_fit_together(self):
        check_terms(self.terms)
        if self.normalize and not self.terms:
            raise ValueError("normalize: needs reward.terms (one classifier's reward is used as it is)")
        return self

    _label = field_validator("positive_label", mode="before")(classmethod(lambda cls, v: label_name(v)))


class PromptConfig(Section):
    corpus: str = Field(
        ...,
        description="Where prompts come from: `rotten_tomatoes` (offline), a CSV/TSV/JSONL/Parquet file, a "
        "`.txt` file (one text per line), an aclImdb folder or a hub dataset id (as `prefalign build-demo --corpus`).",
    )
    split: str | None = Field(None, description="Split of an aclImdb folder or hub dataset (default `train`).")
    subset: str | None = Field(
        None,
        description="Subset (configuration) of a hub dataset that has several, e.g. "
        "`sst2` of `nyu-mll/glue` (`datasets.load_dataset`'s `name`).",
    )
    text_column: str = Field("text", description="Text column of a file or hub dataset.")
    min_tokens: int = Field(2, ge=1, description="Shortest prompt, in policy tokens.")
    max_tokens: int = Field(
        8, ge=1, description="Longest prompt, in policy tokens (each prompt's length is uniform in between)."
    )
    per_prompt: int = Field(4, ge=1, description="Samples drawn per prompt (k); pairs are formed among them.")

    @model_validator(mode="after")
    def _ordered(self):
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) is above max_tokens ({self.max_tokens})")
        return self


class SamplingConfig(Section):
    num_samples: int = Field(10_000, gt=1, description="Texts drawn from the policy for pair building.")
    max_length: int = Field(64, ge=2, description="Maximum sequence length in tokens, including the BOS prompt token.")
    top_k: int = Field(50, ge=0, description="Top-k filtering (0 disables it).")
    top_p: float = Field(0.85, gt=0, le=1, description="Nucleus (top-p) filtering.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    batch_size: int | None = Field(
        None, gt=0, description="Sequences generated per batch. Empty: sized from available memory."
    )
    seed: int = Field(0, ge=0, description="Seed of the sample stage; the same seed gives the same texts.")
    prompts: PromptConfig | None = Field(
        None,
        description="Empty: every text starts from the BOS token alone (the original). A section: start from the "
        "first tokens of corpus texts, `per_prompt` samples each (see prompts.py).",
    )
    engine: Literal["fast", "hf"] = Field(
        "fast",
        description="`fast`: prefalign's KV-cache decode loop (finished sequences leave the batch, or write EOS "
        "until all have finished where the cache cannot drop rows, as a state-space model's; top-k before top-p); "
        "`hf`: transformers' `generate`. Same sampling distribution.",
    )
    compile_step: Literal["auto", "eager", "fused", "graphs"] = Field(
        "auto",
        description="The `fast` engine's decode step (the policy's forward for one new token): `eager` (plain "
        "PyTorch; finished sequences leave the batch), `fused` (torch.compile with a static KV cache: "
        "every sequence runs to the end or until all have finished), `graphs` (those kernels recorded as "
        "CUDA graphs: one launch per step), `auto` (`graphs` on CUDA, else `eager`). Compiling takes "
        "seconds to a minute, for the first two batch sizes of a process; models transformers does not mark "
        "compilable decode eagerly.",
    )

    @model_validator(mode="after")
    def _room_for_completions(self):
        if self.prompts is not None and self.prompts.max_tokens + 2 > self.max_length:
            raise ValueError(
                f"prompts.max_tokens ({self.prompts.max_tokens}) + BOS leaves no room for a completion "
                f"under max_length ({self.max_length})"
            )
        return self


class PairsConfig(Section):
    strategies: list[Literal[PAIR_RULES]] = Field(
        default_factory=lambda: ["random"],
        min_length=1,
        description="Pair rules to build, one pair file (and one set of models) each. `random`: two "
        "distinct samples, higher reward chosen; `margin`: random pairs with a reward gap above "
        "`margin`; `threshold`: one sample below `threshold` (rejected) and one at or above it (chosen); "
        "`best_worst`: best vs worst of each group of `group_size` samples (of each prompt, with prompts); "
        "`stratified`: chosen rewards spread evenly over `interval` in `bins` bins, rejected any lower "
        "sample; `quantile`: chosen from the top `quantile` share, rejected from the bottom one; "
        "`bradley_terry`: random pairs, the higher reward chosen with probability sigmoid(reward gap), else the "
        "lower (a Bradley-Terry rater: DPO then tilts the policy by exp(reward / beta) and stops there). With "
        "prompts every rule pairs samples of the same prompt only.",
    )
    count: int = Field(20_000, gt=0, description="Distinct pairs to build per strategy.")
    margin: float = Field(1.0, ge=0, description="`margin` strategy: minimum reward gap (exclusive).")
    threshold: float = Field(0.5, description="`threshold` strategy: the reward that splits rejected from chosen.")
    group_size: int = Field(4, ge=2, description="`best_worst` without prompts: samples per group.")
    interval: tuple[float, float] = Field(
        (0.0, 2.5),
        description="`stratified`: the reward interval the chosen texts cover evenly (the original's [0, 2.5]).",
    )
    bins: int = Field(
        10, ge=1, description="`stratified`: equal-width bins of `interval`, each with the same number of pairs."
    )
    stratified_gap: float = Field(
        0.0, ge=0, description="`stratified`: the rejected reward is below the chosen by more than this."
    )
    quantile: float = Field(0.25, gt=0, le=0.5, description="`quantile`: share of samples on each side (top / bottom).")
    seed: int = Field(0, ge=0, description="Seed of the pair draw.")

    @field_validator("strategies")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("strategies must not repeat")
        return v

    @field_validator("interval")
    @classmethod
    def _interval(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not v[0] < v[1]:
            raise ValueError(f"interval must be [low, high] with low < high, got {list(v)}")
        return v

    def rule(self, strategy: str) -> dict:
        """The settings `strategy` reads (what its pair file depends on)."""
        return {
            "margin": {"margin": self.margin},
            "threshold": {"threshold": self.threshold},
            "best_worst": {"group_size": self.group_size},
            "stratified": {"interval": tuple(self.interval), "bins": self.bins, "margin_floor": self.stratified_gap},
            "quantile": {"q": self.quantile},
        }.get(strategy, {})


class EvaluateConfig(Section):
    runs: int = Field(10, gt=0, description="Independent evaluation runs per model, each with its own seed.")
    samples: int = Field(5_000, gt=0, description="Texts sampled per run (same sampler settings as `sampling`).")
    seed: int = Field(1_000, ge=0, description="Run k uses seed `seed + k`; every model sees the same seeds.")
    reward_thresholds: list[float] = Field(
        default_factory=lambda: [0.0, 0.5],
        description="Each run reports the share of texts with reward above each value.",
    )
    kl: bool = Field(
        True,
        description="Estimate KL(policy || original) on each run's samples (one extra forward of the original; of "
        "the policy too with `sampling.engine: hf`).",
    )
    during_training: DuringTrainingConfig | None = Field(
        None, description="Score the model while it trains (a reward-KL curve per model). Empty: off."
    )
    judges: list[JudgeConfig] = Field(
        default_factory=list,
        description="Classifiers that score every evaluation text (and the best-of-N choices) but are never "
        "trained on: the gap between the reward and a judge's score shows over-optimisation. Empty: none.",
    )
    fluency: FluencyConfig | None = Field(
        None, description="A language model that scores how fluent the evaluation texts are. Empty: off."
    )

    _judges = field_validator("judges")(classmethod(lambda cls, v: unique_judges(v)))


class IterativeConfig(Section):
    rounds: int = Field(
        0,
        ge=0,
        description="Rounds of sample -> score -> pairs -> train, each from the previous "
        "round's model (0: off). Reference fixed to the original policy; every round is evaluated.",
    )
    strategy: str = Field("random", description="Pair rule of every round.")
    losses: list[str | LossMix] = Field(
        default_factory=lambda: ["sigmoid"], min_length=1, description="One chain per loss."
    )
    betas: list[float] = Field(default_factory=lambda: [0.1], min_length=1, description="One chain per beta.")
    beta_growth: float = Field(
        1.0,
        gt=0,
        description="Beta schedule: round r trains with beta x beta_growth^(r-1) "
        "(e.g. 2: 0.1, 0.2, 0.4, ...: the reference is the original policy, so a growing beta "
        "brakes the later rounds' drift from it); 1: the same beta every round.",
    )
    recipe: Literal[RECIPE_NAMES] | None = Field(None, description="Recipe (default: train.recipe).")
    samples: int | None = Field(None, gt=1, description="Texts sampled per round (default: sampling.num_samples).")
    dpo: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra `trl.DPOConfig` fields for the chain's rounds only, on top of its "
        "recipe and `train.dpo` (e.g. `{learning_rate: 2.5e-5}` for smaller steps per round); same names as `train.dpo`.",
    )

    _loss = field_validator("losses")(classmethod(lambda cls, v: [check_loss(x) for x in v]))
    _strategy = field_validator("strategy")(classmethod(lambda cls, v: ExtraPoint._known_strategy(v)))

    _dpo = field_validator("dpo")(
        classmethod(lambda cls, v: dpo_fields(v, "iterative.betas / iterative.beta_growth / iterative.losses"))
    )


class OnlineConfig(Section):
    kl_coefs: list[float] = Field(
        default_factory=list,
        description="One RLOO model per KL coefficient (TRL's `beta`), trained from the BOS "
        "prompt (corpus prompts are not used here) with the classifier's positive logit as reward; empty: none.",
    )
    steps: int = Field(100, gt=0, description="RLOO optimizer steps.")
    rloo: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra `trl.RLOOConfig` fields (e.g. `{learning_rate: 1e-5, num_generations: 8}`).",
    )

    @field_validator("rloo")
    @classmethod
    def _known_rloo_fields(cls, v: dict[str, Any]) -> dict[str, Any]:
        from trl import RLOOConfig

        return trainer_fields(v, RLOOConfig, {"beta", "max_steps", "output_dir"}, "online.kl_coefs / online.steps")


# The methods of results.csv's `method` column a report baseline may name (the original is never
# beaten on KL, so it is no baseline).
BASELINE_METHODS = ("dpo", "iterative", "rloo")


class ReportConfig(Section):
    baseline: str | None = Field(
        "seed",
        description="The group of models every other trained model is compared against in the report's frontier "
        "section (which models beat every one of them on reward and diversity at once, with lower KL, each by more "
        "than the std; else the one that comes closest): a recipe (`seed`, `default`: the DPO models trained with "
        "it) or a method (`dpo`, `iterative`, `rloo`). Shown when KL is measured and the run has such models. "
        "Empty: no such comparison.",
    )

    @field_validator("baseline")
    @classmethod
    def _a_recipe_or_method(cls, v: str | None) -> str | None:
        if not v:
            return None
        if v not in RECIPE_NAMES + BASELINE_METHODS:
            raise ValueError(
                f"unknown baseline {v!r}: name a recipe ({', '.join(RECIPE_NAMES)}) or a method "
                f"({', '.join(BASELINE_METHODS)}), or leave it empty for no comparison"
            )
        return v


class Config(Section):
    name: str = Field("experiment", min_length=1, description="Experiment name; default run dir is runs/<name>/.")
    run_dir: str | None = Field(None, description="Where every stage writes. Empty: runs/<name>/ under the cwd.")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto", description="Torch device; `auto` picks CUDA, then MPS, then CPU."
    )
    policy: PolicyConfig = Field(default_factory=PolicyConfig, description="The policy to align.")
    reward: RewardConfig = Field(default_factory=RewardConfig, description="The reward classifier.")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="Sample stage.")
    pairs: PairsConfig = Field(default_factory=PairsConfig, description="Pairs stage.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Train stage.")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig, description="Evaluate stage.")
    iterative: IterativeConfig = Field(default_factory=IterativeConfig, description="On-policy DPO rounds.")
    online: OnlineConfig = Field(default_factory=OnlineConfig, description="Online RL baseline (TRL's RLOOTrainer).")
    report: ReportConfig = Field(default_factory=ReportConfig, description="Report stage.")
    baselines: BaselinesConfig = Field(
        default_factory=BaselinesConfig, description="Reference policies evaluated beside the trained models."
    )

    @model_validator(mode="after")
    def _losses_fit_settings(self):
        entries = (
            list(self.train.losses)
            + [x.loss for x in self.train.extra]
            + (list(self.iterative.losses) if self.iterative.rounds else [])
        )
        types = {t for e in entries for t in ([e] if isinstance(e, str) else e.types)}
        if "exo_pair" in types and not self.train.dpo.get("label_smoothing"):
            raise ValueError("loss `exo_pair` needs train.dpo.label_smoothing > 0 (the EXO paper suggests 1e-3)")
        if "robust" in types and not 0 <= self.train.dpo.get("label_smoothing", 0.0) < 0.5:
            raise ValueError("loss `robust` needs train.dpo.label_smoothing in [0, 0.5)")
        return self

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.name
