"""The config sections that judge a trained model beyond its own reward: a best-of-N reference
(`baselines`), scores along training (`evaluate.during_training`), classifiers that are never trained
on (`evaluate.judges`) and a language model's fluency score (`evaluate.fluency`).

    baselines:
      best_of_n: [2, 4, 8, 16, 32]     # best-of-N policies of the original, evaluated like every model
      best_of_n_samples: 250           # chosen texts per evaluation run (the pool is 32 x 250)
    evaluate:
      during_training: {every: 25, samples: 200}
      judges: [{name: minilm, model: prefalign:demo-minilm}]
      fluency: {model: prefalign:smollm2, samples: 200}
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from prefalign.config.section import Section, label_name
from prefalign.models.specs import builtin_checked

# A judge's name becomes a column name (judge_<name>_reward_mean) and a directory name.
JUDGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class BaselinesConfig(Section):
    best_of_n: list[int] = Field(
        default_factory=list,
        description="Best-of-N policies of the original model, one per N: each evaluation run draws N texts per "
        "chosen text (with prompts: N per prompt) and keeps the one with the highest reward. Evaluated with the "
        "same seeds, runs and metrics as every model; their KL is the analytic log N - (N-1)/N, an upper "
        "bound. One pool per run, drawn once at the largest N; smaller N take nested prefixes of it. Empty: none.",
    )
    best_of_n_samples: int | None = Field(
        None,
        gt=0,
        description="Chosen texts per evaluation run of every best-of-N policy (the pool holds the largest N "
        "times this); at most evaluate.samples (a larger value: evaluate.samples). Empty: evaluate.samples. The "
        "chosen texts of N = 1 are the first ones of the original's evaluation runs.",
    )

    @field_validator("best_of_n", mode="before")
    @classmethod
    def _whole_numbers(cls, v):
        values = v if isinstance(v, list) else [v]
        for n in values:
            if isinstance(n, bool) or not (isinstance(n, int) or (isinstance(n, float) and n.is_integer())):
                raise ValueError(f"best-of-N values are whole numbers >= 1, not {n!r}")
        return v

    @field_validator("best_of_n")
    @classmethod
    def _at_least_one_each(cls, v: list[int]) -> list[int]:
        if any(n < 1 for n in v):
            raise ValueError(f"best-of-N values are whole numbers >= 1, not {min(v)}")
        return sorted(set(v))


class DuringTrainingConfig(Section):
    every: int = Field(
        ...,
        gt=0,
        description="Every this many optimizer steps (and at the last step) the model in training samples "
        "`samples` texts, which are scored and measured like an evaluation run (KL against the original "
        "included); one row per point in eval/<model>/trajectory.csv. At most the training's steps.",
    )
    samples: int = Field(..., gt=0, description="Texts sampled at each point.")
    seed: int = Field(2_000, ge=0, description="Seed of every point's sampling (the same texts' prompts each time).")


class JudgeConfig(Section):
    name: str = Field(
        ...,
        description="The judge's name: its columns are judge_<name>_reward_mean, judge_<name>_positive_rate "
        "(letters, digits, `_`, `-`).",
    )
    model: str = Field(..., description="Sequence classifier: hub id, local directory or `prefalign:NAME`.")
    revision: str | None = Field(None, description="Hub revision of `model`.")
    positive_label: str = Field("POSITIVE", description="Name of its positive class in `config.id2label`.")
    single_logit: bool = Field(False, description="A one-output classifier: that logit is its score.")
    trust_remote_code: bool = Field(False, description="Run the code the checkpoint ships with (as reward's).")

    @field_validator("name")
    @classmethod
    def _a_column_name(cls, v: str) -> str:
        if not JUDGE_NAME.match(v):
            raise ValueError(f"judge name {v!r}: use letters, digits, `_` and `-` (it names a column and a folder)")
        return v

    @field_validator("model")
    @classmethod
    def _a_classifier(cls, v: str) -> str:
        return builtin_checked(v, "reward")

    _label = field_validator("positive_label", mode="before")(classmethod(lambda cls, v: label_name(v)))


class FluencyConfig(Section):
    model: str = Field(
        ...,
        description="A causal LM that is not the policy (`prefalign:smollm2`: SmolLM2-135M, offline): each text's "
        "fluency is its mean per-token log-probability under this model and its own tokenizer.",
    )
    revision: str | None = Field(None, description="Hub revision of `model`.")
    samples: int | None = Field(
        None,
        gt=0,
        description="Texts scored per evaluation run (and per training-curve point): the first this many. Empty: all.",
    )
    along_training: bool = Field(
        True,
        description="With evaluate.during_training, also score the texts of every training-curve point (on a "
        "CPU the slowest evidence: a 135M-parameter scorer reads ~9 texts/s on 2 cores).",
    )
    threshold: float = Field(
        -6.0,
        description="A text whose fluency (nats per token) is below this counts as not fluent: column "
        "`fluency_low_share`.",
    )
    trust_remote_code: bool = Field(False, description="Run the code the checkpoint ships with.")

    @field_validator("model")
    @classmethod
    def _a_causal_lm(cls, v: str) -> str:
        return builtin_checked(v, "policy")


def unique_judges(judges: list[JudgeConfig]) -> list[JudgeConfig]:
    names = [j.name for j in judges]
    doubled = sorted({n for n in names if names.count(n) > 1})
    if doubled:
        raise ValueError(f"two judges named {doubled[0]!r}: give each judge its own name")
    return judges
