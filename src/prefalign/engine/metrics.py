"""Pure metric functions: no model, no file, no global state.

Diversity is the original experiment's definition, exactly: every generated text is re-tokenized
with the *policy's* tokenizer without adding special tokens (for GPT-2 that is what the original's
`tokenizer.encode(text)` does), pad ids are dropped, token ids are counted over all texts of a run,
and the entropy of that unigram distribution is taken in nats (natural log, as `scipy.stats.entropy`
does). It measures how spread the vocabulary is, not how different texts are from one another, and
it rises for garbage too: a policy that collapses into stray byte tokens scores a high diversity,
which `broken_share` exposes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd


def _flat_ids(token_ids: Iterable[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(every id of every text in one int64 array, each text's length)."""
    lists = [list(ids) for ids in token_ids]
    lengths = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    return np.fromiter(itertools.chain.from_iterable(lists), dtype=np.int64, count=int(lengths.sum())), lengths


def token_entropy(token_ids: Iterable[Sequence[int]], pad_id: int | None = None) -> float:
    """Entropy (nats) of the unigram distribution of token ids over all texts; pad ids dropped."""
    ids, _ = _flat_ids(token_ids)
    if pad_id is not None:
        ids = ids[ids != pad_id]
    if len(ids) == 0:
        return 0.0
    counts = np.bincount(ids) if ids.max() < 2**24 else np.unique(ids, return_counts=True)[1]  # ids are >= 0
    p = counts[counts > 0] / len(ids)
    return float(-(p * np.log(p)).sum())


def broken_share(texts: Sequence[str]) -> float:
    """Share of texts holding U+FFFD, the replacement character: byte-level BPE tokens (GPT-2's) that do
    not decode to text. A policy that exploits the classifier with stray byte tokens writes them in
    most texts; fluent text has none. 0.0 for no texts."""
    return float(np.mean(["\ufffd" in t for t in texts])) if len(texts) else 0.0


def policy_token_ids(texts: Sequence[str], tokenizer) -> list[list[int]]:
    """`texts` re-tokenized with the policy tokenizer, no special tokens added (the original's `encode`)."""
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"] if len(texts) else []


def diversity(texts: Sequence[str], tokenizer) -> float:
    """`token_entropy` of `texts` re-tokenized with the policy tokenizer (no special tokens added)."""
    return token_entropy(policy_token_ids(texts, tokenizer), tokenizer.pad_token_id)


def run_summary(rewards: np.ndarray, is_positive: np.ndarray) -> dict[str, float]:
    """Per-run reward statistics: mean, std (population, ddof=0), share predicted positive."""
    rewards = np.asarray(rewards, dtype=np.float64)
    return {
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std()),
        "positive_rate": float(np.asarray(is_positive, dtype=bool).mean()),
    }


def distinct_n(token_ids: Iterable[Sequence[int]], n: int) -> float:
    """distinct-n (Li et al., 2016): distinct n-grams / all n-grams, counted over every text of a run.

    n-grams never cross texts. 0.0 when no text has n tokens.
    """
    ids, lengths = _flat_ids(token_ids)
    text_of = np.repeat(np.arange(len(lengths)), lengths)
    starts = np.arange(max(len(ids) - n + 1, 0))
    starts = starts[text_of[starts] == text_of[starts + n - 1]]  # the n-gram ends in the text it starts in
    if len(starts) == 0:
        return 0.0
    grams = np.stack([ids[starts + j] for j in range(n)], 1)  # (n-grams, n)
    base = int(ids.max()) + 1
    if n * math.log2(max(base, 2)) < 62:  # each n-gram as one int64 in base `base`, counted by hashing
        keys = (grams * base ** np.arange(n - 1, -1, -1, dtype=np.int64)).sum(1)
        return len(pd.unique(keys)) / len(grams)
    return len(np.unique(grams, axis=0)) / len(grams)


def reward_profile(
    rewards: np.ndarray, thresholds: Sequence[float] = (0.0, 0.5), quantiles: Sequence[int] = (5, 25, 50, 75, 95)
) -> dict[str, float]:
    """Shares of rewards strictly above each threshold (`share_above_<t>`) and percentiles (`reward_p<q>`).

    Percentiles use numpy's default (linear interpolation between order statistics).
    """
    r = np.asarray(rewards, dtype=np.float64)
    out = {f"share_above_{t:g}": float((r > t).mean()) for t in thresholds}
    out.update({f"reward_p{q:02d}": float(np.percentile(r, q)) for q in quantiles})
    return out


def kl_estimate(logp: np.ndarray, logp_ref: np.ndarray, n_scored: np.ndarray) -> dict[str, float]:
    """Monte-Carlo KL(policy || reference) from samples: per sequence and per token.

    `logp` / `logp_ref`: each sample's log-probability under the policy / reference (summed over its
    scored tokens); `n_scored`: how many tokens were scored. `kl_seq` = mean of logp - logp_ref;
    `kl_token` = sum of (logp - logp_ref) / sum of n_scored (nats per generated token).

    The estimator is unbiased only when the samples come from the policy's own distribution. prefalign
    samples with top-k / top-p, i.e. from a truncated q, and scores with the full pi and pi_ref, so
    it estimates E_q[log pi - log pi_ref] = KL(q || pi_ref) - KL(q || pi), not KL(pi || pi_ref); the
    gap grows with how much mass the truncation removes. Individual terms can be negative.
    """
    d = np.asarray(logp, dtype=np.float64) - np.asarray(logp_ref, dtype=np.float64)
    tokens = float(np.sum(n_scored))
    return {"kl_seq": float(d.mean()) if len(d) else 0.0, "kl_token": float(d.sum() / tokens) if tokens else 0.0}


def pareto_mask(maximize: np.ndarray, minimize: np.ndarray | None = None) -> np.ndarray:
    """True for the rows no other row dominates: at least as good on every column, better on one.

    `maximize`: (n, a) values where higher is better; `minimize`: (n, b) where lower is better.
    """
    if len(maximize) == 0:  # e.g. every model left out of the front
        return np.zeros(0, dtype=bool)
    x = np.asarray(maximize, dtype=np.float64).reshape(len(maximize), -1)
    if minimize is not None:
        x = np.hstack([x, -np.asarray(minimize, dtype=np.float64).reshape(len(maximize), -1)])
    ge = (x[:, None, :] >= x[None, :, :]).all(-1)  # ge[j, i]: j at least as good as i everywhere
    gt = (x[:, None, :] > x[None, :, :]).any(-1)
    return ~(ge & gt).any(0)


def best_of_n_choice(rewards: np.ndarray, n: int) -> np.ndarray:
    """For each column (a row of chosen texts), the draw best-of-n keeps: the highest reward among
    draws 0..n-1, the first of them on a tie.

    `rewards`: (draws, rows), draw j's reward of row i. Returns (rows,) draw indices.
    """
    rewards = np.asarray(rewards)
    if not 1 <= n <= len(rewards):
        raise ValueError(f"best-of-{n} needs 1..{len(rewards)} draws")
    return np.argmax(rewards[:n], axis=0)
