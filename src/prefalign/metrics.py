"""Pure metric functions: no model, no file, no global state.

Diversity is the original experiment's definition, exactly: every generated text is re-tokenized
with the *policy's* tokenizer without adding special tokens (for GPT-2 that is what the original's
`tokenizer.encode(text)` does), pad ids are dropped, token ids are counted over all texts of a run,
and the entropy of that unigram distribution is taken in nats (natural log, as `scipy.stats.entropy`
does). It measures how spread the vocabulary is, not how different texts are from one another.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np


def token_entropy(token_ids: Iterable[Sequence[int]], pad_id: int | None = None) -> float:
    """Entropy (nats) of the unigram distribution of token ids over all texts; pad ids dropped."""
    counts: Counter[int] = Counter()
    for ids in token_ids:
        counts.update(i for i in ids if i != pad_id)
    total = sum(counts.values())
    if total == 0:
        return 0.0
    return -sum(c / total * math.log(c / total) for c in counts.values())


def diversity(texts: Sequence[str], tokenizer) -> float:
    """`token_entropy` of `texts` re-tokenized with the policy tokenizer (no special tokens added)."""
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"] if len(texts) else []
    return token_entropy(ids, tokenizer.pad_token_id)


def run_summary(rewards: np.ndarray, positive: np.ndarray) -> dict[str, float]:
    """Per-run reward statistics: mean, std (population, ddof=0), share predicted positive."""
    rewards = np.asarray(rewards, dtype=np.float64)
    return {
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std()),
        "positive_rate": float(np.asarray(positive, dtype=bool).mean()),
    }
