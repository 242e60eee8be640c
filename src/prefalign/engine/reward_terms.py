"""The reward of a text: one classifier's positive logit, or a weighted sum of terms (`reward.terms`).

A scorer is what sample_and_score calls on each batch of texts: `scorer(full, completions, n_tokens)`
(full: what a classifier reads, prompt + completion; completions: the policy's text alone; n_tokens:
its length in policy tokens before EOS) returns the reward columns, named in `scorer.fields`:

- `ClassifierScorer`: `reward` (the positive logit), `positive_prob`, `is_positive`;
- `TermScorer`: those three, where `reward` is sum(weight * value) over the terms and `positive_prob` /
  `is_positive` come from the first classifier term, plus each term's value as `reward_<name>`.

Terms (config/reward_terms.py): a classifier's positive logit; `length` (tokens, or -|tokens - target|);
`fluency` (engine/fluency.py's mean log-probability per token, `empty` where no token is scored);
`broken` (-1 for a text with U+FFFD, else 0). With `stats` (normalize), each value is standardised
((value - mean) / std, both measured on the original's samples; a constant term, std 0, is 0) before
weighting; without stats a normalising scorer's `reward` is NaN, to be filled by `weighted_reward`
once the stats are known (the original's own samples).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from prefalign.engine.scoring import score_texts

CLASSIFIER_FIELDS = (("reward", pa.float32()), ("positive_prob", pa.float32()), ("is_positive", pa.bool_()))
# The character a tokenizer's decode writes for bytes that are not valid UTF-8 (metrics.broken_share counts it).
REPLACEMENT = "\ufffd"


def term_column(name: str) -> str:
    """A term's column in samples.parquet and the evaluation files."""
    return f"reward_{name}"


def length_values(n_tokens: np.ndarray, target: int | None) -> np.ndarray:
    """The `length` term: the length in tokens, or -|length - target|."""
    n = np.asarray(n_tokens, dtype=np.float64)
    return n if target is None else -np.abs(n - target)


def broken_values(texts: list[str]) -> np.ndarray:
    """The `broken` term: -1 for a text with undecodable bytes, else 0."""
    return -np.array([REPLACEMENT in t for t in texts], dtype=np.float64)


def term_stats(values: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Each term's mean and std (ddof 1) over texts: {name: {"mean", "std"}}."""
    out = {}
    for name, v in values.items():
        v = np.asarray(v, dtype=np.float64)
        out[name] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
    return out


def weighted_reward(
    values: dict[str, np.ndarray], weights: dict[str, float], stats: dict[str, dict[str, float]] | None = None
) -> np.ndarray:
    """sum over terms of weight * value (float64), each value first standardised with `stats` when given."""
    total = None
    for name, weight in weights.items():
        v = np.asarray(values[name], dtype=np.float64)
        if stats is not None:
            mean, std = stats[name]["mean"], stats[name]["std"]
            v = (v - mean) / std if std > 0 else np.zeros_like(v)
        total = weight * v if total is None else total + weight * v
    return total


class ClassifierScorer:
    """One classifier's scores (score_texts) as the reward."""

    fields = CLASSIFIER_FIELDS

    def __init__(self, model, tokenizer, positive_index: int, batch_size: int | None = None):
        self.model, self.tokenizer, self.positive_index, self.batch_size = model, tokenizer, positive_index, batch_size

    def __call__(self, full: list[str], completions: list[str], n_tokens: np.ndarray) -> dict[str, np.ndarray]:
        return score_texts(full, self.model, self.tokenizer, self.positive_index, self.batch_size)


@dataclass
class LoadedTerm:
    """A term ready to score: its settings (a pipeline.reward_model.Term) and, for a classifier, a
    ClassifierScorer; for fluency, (causal LM, tokenizer)."""

    term: Any
    model: Any = None


class TermScorer:
    """The weighted sum of `terms` (LoadedTerm, in config order) with each term's own column."""

    def __init__(self, terms: list[LoadedTerm], stats: dict | None = None, normalize: bool = False):
        self.terms, self.stats, self.normalize = terms, stats, normalize
        self.weights = {t.term.name: t.term.weight for t in terms}
        self.fields = CLASSIFIER_FIELDS + tuple((term_column(t.term.name), pa.float32()) for t in terms)

    def values(self, full: list[str], completions: list[str], n_tokens: np.ndarray) -> tuple[dict, dict]:
        """({term name: value per text}, the first classifier's score_texts columns)."""
        values, first = {}, None
        for loaded in self.terms:
            term = loaded.term
            if term.type == "classifier":
                scores = loaded.model(full, completions, n_tokens)
                first = first or scores
                values[term.name] = scores["reward"].astype(np.float64)
            elif term.type == "length":
                values[term.name] = length_values(n_tokens, term.target)
            elif term.type == "fluency":
                from prefalign.engine.fluency import fluency_scores

                lm, tokenizer = loaded.model
                v = fluency_scores(list(full), lm, tokenizer).astype(np.float64)
                values[term.name] = np.where(np.isnan(v), term.empty, v)
            elif term.type == "broken":
                values[term.name] = broken_values(list(completions))
            else:  # config/reward_terms.py lists the types; a new one needs its value here
                raise AssertionError(f"unknown reward term type {term.type!r}")
        return values, first

    def __call__(self, full: list[str], completions: list[str], n_tokens: np.ndarray) -> dict[str, np.ndarray]:
        values, first = self.values(full, completions, n_tokens)
        if self.normalize and self.stats is None:
            reward = np.full(len(full), np.nan)  # filled once the stats are known (weighted_reward)
        else:
            reward = weighted_reward(values, self.weights, self.stats if self.normalize else None)
        out = {
            "reward": reward.astype(np.float32),
            "positive_prob": first["positive_prob"],
            "is_positive": first["is_positive"],
        }
        out.update({term_column(name): v.astype(np.float32) for name, v in values.items()})
        return out
