"""The reward of a run as plan items see it: one classifier (`RewardModel`), or weighted terms.

`RewardModel.key` changes whenever a text's reward could change (a model, a label, a term's settings,
a weight, normalising); `scores_key` only when a text's term values could change (not with a weight
or `normalize`): stored texts whose scores_key still holds are re-weighed, never sampled again
(stages/sample.py, stages/evaluate.py). With no terms the two are one key, as before terms existed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefalign.pipeline.store import key_of


@dataclass(frozen=True)
class Term:
    """One `reward.terms` entry, resolved: defaults filled in from reward.* / policy.*, models identified."""

    name: str
    type: str  # config/reward_terms.TERM_TYPES
    weight: float
    ref: str | None = None  # classifier / fluency: the model
    revision: str | None = None
    identity: str | None = None  # models.loading.identity of `ref`
    positive_label: str | None = None  # classifier
    single_logit: bool = False  # classifier
    trust_remote_code: bool = False  # not in the key (the same model either way)
    target: int | None = None  # length
    empty: float | None = None  # fluency: the value of a text with nothing to score

    @property
    def scores_key(self) -> str:
        """What the term's value of a text depends on (everything but the weight)."""
        label = "single-logit" if self.single_logit else self.positive_label
        return key_of("term", self.name, self.type, self.identity, label, self.target, self.empty)


@dataclass(frozen=True)
class RewardModel:
    """The classifier whose positive-class logit is the reward, or (with `terms`) the first classifier
    term, which gives the positive rate, with every term."""

    ref: str
    revision: str | None
    positive_label: str
    identity: str
    single_logit: bool = False  # reward.single_logit: a one-output classifier's logit is the reward
    trust_remote_code: bool = False  # reward.trust_remote_code; not in the key
    terms: tuple[Term, ...] = ()  # reward.terms, resolved; empty: the classifier alone
    normalize: bool = False  # reward.normalize
    # With normalize: samples.meta.json of the original's samples, whose term stats standardise the terms,
    # and those samples' texts key (a stats change changes every sum). Not used otherwise.
    stats_path: Path | None = None
    stats_key: str | None = None

    @property
    def scores_key(self) -> str:
        """The key of every term's value (or of the classifier's reward): not the weights."""
        if not self.terms:
            if self.single_logit:
                return key_of(self.identity, "single-logit")
            return key_of(self.identity, self.positive_label)
        return key_of("reward-terms", [t.scores_key for t in self.terms])

    @property
    def key(self) -> str:
        if not self.terms:
            return self.scores_key
        normalized = ("normalize", self.stats_key) if self.normalize else None
        return key_of("reward-sum", self.scores_key, [t.weight for t in self.terms], normalized)

    @property
    def columns(self) -> tuple[str, ...]:
        """The term columns (reward_<name>) each scored text gets; none without terms."""
        from prefalign.engine.reward_terms import term_column

        return tuple(term_column(t.name) for t in self.terms)

    def term_values(self, table) -> dict:
        """{term name: its column of `table`} (a DataFrame with the term columns)."""
        return {t.name: table[column].to_numpy() for t, column in zip(self.terms, self.columns)}

    def weighted_sum(self, table, stats: dict | None):
        """The reward of each row of `table` from its term columns: engine.reward_terms.weighted_reward
        under these weights (and `stats`, with normalize), float32."""
        from prefalign.engine.reward_terms import weighted_reward

        weights = {t.name: t.weight for t in self.terms}
        return weighted_reward(self.term_values(table), weights, stats).astype("float32")
