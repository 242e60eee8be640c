"""`reward.terms`: a reward composed of weighted terms instead of one classifier's positive logit.

    reward:
      model: prefalign:demo           # the classifier a `classifier` term reads unless it names another
      terms:
        - {type: classifier, weight: 1.0}              # column reward_classifier: its positive logit
        - {type: fluency, weight: 0.5}                 # reward_fluency: mean log p per token, the policy's
        - {type: length, target: 30, weight: 0.02}     # reward_length: -|completion tokens - 30|
        - {type: broken, weight: 2.0}                  # reward_broken: -1 for a text with undecodable bytes
      normalize: false                 # true: each term standardised on the original's samples first

Every term's raw value is higher for a text the term prefers (the plain length, without `target`, is the
exception: a negative weight penalises length), and `reward` is sum(weight * value). A term's name (by
default its type) names its column, `reward_<name>`.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Union

from pydantic import Field, field_validator

from prefalign.config.section import Section, label_name
from prefalign.models.specs import builtin_checked

# A term's name becomes a column name (reward_<name>, reward_<name>_mean).
TERM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class _Term(Section):
    name: str | None = Field(
        None,
        description="The term's name: its column is reward_<name>. Empty: the term's type (two terms of one "
        "type need names).",
    )
    weight: float = Field(
        1.0, description="The term's weight in the sum (a number; 0 keeps the column out of the sum)."
    )

    @field_validator("name")
    @classmethod
    def _a_column_name(cls, v: str | None) -> str | None:
        if v is not None and not TERM_NAME.match(v):
            raise ValueError(f"term name {v!r}: use letters, digits, `_` and `-` (it names a column)")
        return v

    @field_validator("weight", mode="before")
    @classmethod
    def _a_number(cls, v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"a term's weight is a number, not {v!r}")
        return v

    @property
    def label(self) -> str:
        return self.name or self.type


class ClassifierTerm(_Term):
    type: Literal["classifier"] = Field(description="A sequence classifier's positive logit.")
    model: str | None = Field(
        None, description="Sequence classifier: hub id, local directory or `prefalign:NAME`. Empty: reward.model."
    )
    revision: str | None = Field(
        None, description="Hub revision of `model` (empty with `model` empty: reward.revision)."
    )
    positive_label: str | None = Field(
        None, description="Its positive class in `config.id2label`. Empty: reward.positive_label."
    )
    single_logit: bool | None = Field(None, description="A one-output classifier. Empty: reward.single_logit.")
    trust_remote_code: bool | None = Field(None, description="Run the checkpoint's own code. Empty: reward's setting.")

    @field_validator("model")
    @classmethod
    def _a_classifier(cls, v: str | None) -> str | None:
        return v if v is None else builtin_checked(v, "reward")

    _label = field_validator("positive_label", mode="before")(classmethod(lambda cls, v: label_name(v)))


class LengthTerm(_Term):
    type: Literal["length"] = Field(description="The completion's length in policy tokens (before EOS).")
    target: int | None = Field(
        None,
        ge=0,
        description="Empty: the value is the length (a negative weight penalises it). A number: the "
        "value is -|length - target|, so a positive weight pulls texts towards that length.",
    )


class FluencyTerm(_Term):
    type: Literal["fluency"] = Field(
        description="Mean per-token log-probability of the text (prompt + completion) under a causal LM, as "
        "evaluate.fluency computes it: word salad and broken bytes score low."
    )
    model: str | None = Field(
        None, description="A causal LM (e.g. `prefalign:smollm2`). Empty: the original policy (policy.model)."
    )
    revision: str | None = Field(None, description="Hub revision of `model`.")
    trust_remote_code: bool = Field(False, description="Run the checkpoint's own code (as policy's).")
    empty: float = Field(
        -10.0, description="The value of a text with no token to score (an empty completion), in nats per token."
    )

    @field_validator("model")
    @classmethod
    def _a_causal_lm(cls, v: str | None) -> str | None:
        return v if v is None else builtin_checked(v, "policy")


class BrokenTerm(_Term):
    type: Literal["broken"] = Field(
        description="-1 for a text with undecodable bytes (U+FFFD, as evaluate's broken_share counts them), else 0."
    )


TERMS = (ClassifierTerm, LengthTerm, FluencyTerm, BrokenTerm)
RewardTerm = Annotated[Union[TERMS], Field(discriminator="type")]
TERM_TYPES = tuple(term.model_fields["type"].annotation.__args__[0] for term in TERMS)


def check_terms(terms: list) -> None:
    """What a list of terms must satisfy together (ValueError naming what to change)."""
    if not terms:
        return
    names = [t.label for t in terms]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"terms: two terms named {twice[0]!r}; give each a `name` (it names its column)")
    if all(t.weight == 0 for t in terms):
        raise ValueError("terms: every weight is 0, so the reward would be 0 for every text; give a term a weight")
    if not any(t.type == "classifier" for t in terms):
        raise ValueError(
            "terms: no `classifier` term; add one (`{type: classifier}` reads reward.model): the first classifier "
            "term gives the positive rate"
        )
