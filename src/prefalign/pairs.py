"""Build chosen/rejected pairs from scored samples: the `pairs` stage.

The original experiment drew two samples at random and called the higher-reward one chosen. Rules:

- `random`: two distinct samples drawn uniformly; the higher reward is chosen.
- `margin`: as random, restricted to pairs whose reward gap exceeds `margin`.
- `threshold`: one sample with reward < `threshold` (rejected) and one with reward >= it (chosen).

Every rule draws *distinct* pairs (no (i, j) twice) uniformly from the pairs it allows, and exact
reward ties are never pairs (there is no preference to learn). The number of allowed pairs is
counted exactly first, so a request that cannot be met stops with a message saying why instead of
looping or writing a short file. Run alone with:

    prefalign pairs CONFIG
"""

from __future__ import annotations

import numpy as np
import pandas as pd


class PairError(ValueError):
    """The samples cannot give the pairs asked for."""


def build_pairs(rewards, strategy: str, count: int, margin: float = 1.0, threshold: float = 0.5,
                seed: int = 0) -> pd.DataFrame:  # fmt: skip
    """Return `count` distinct (chosen, rejected) index pairs with their rewards.

    Columns: `chosen_index`, `rejected_index`, `chosen_reward`, `rejected_reward`; always
    chosen_reward > rejected_reward (by more than `margin` for `margin`).
    """
    r = np.asarray(rewards, dtype=np.float64)
    n = len(r)
    order = np.argsort(r, kind="stable")
    s = r[order]
    # For each sample (in sorted order), the first sorted position whose reward may be chosen over it.
    if strategy == "random":
        lo = np.searchsorted(s, s, side="right")
        allowed_low = np.ones(n, bool)
        why = "all samples have the same reward"
    elif strategy == "margin":
        lo = np.searchsorted(s, s + margin, side="right")
        allowed_low = np.ones(n, bool)
        why = f"no two samples differ in reward by more than margin={margin} (rewards span {s[0]:.3f}..{s[-1]:.3f})" if n else ""
    elif strategy == "threshold":
        n_below = int(np.searchsorted(s, threshold, side="left"))
        lo = np.full(n, n_below)
        allowed_low = np.arange(n) < n_below
        why = (f"{n_below} samples have reward < threshold={threshold} and {n - n_below} have reward >= it "
               f"(rewards span {s[0]:.3f}..{s[-1]:.3f}); both sides need samples") if n else ""  # fmt: skip
    else:
        raise ValueError(f"unknown pair strategy {strategy!r}")
    if n < 2:
        raise PairError(f"{strategy}: need at least 2 samples, got {n}")

    # weight[i] = number of partners sample i can be rejected against.
    weight = np.where(allowed_low, n - lo, 0).astype(np.float64)
    available = int(weight.sum())
    if available == 0:
        raise PairError(f"{strategy}: cannot build any pair: {why}")
    if available < count:
        raise PairError(
            f"{strategy}: asked for {count} distinct pairs but the {n} samples allow only {available} "
            f"({why if strategy != 'random' else 'ties excluded'}); lower pairs.count or sample more"
        )

    rng = np.random.default_rng(seed)
    if count * 4 >= available:
        # Dense request: enumerate every allowed pair and pick without replacement.
        w = weight.astype(np.int64)
        low_all = np.repeat(np.arange(n), w)
        offsets = np.arange(available) - np.repeat(np.cumsum(w) - w, w)
        pick = rng.choice(available, size=count, replace=False)
        low, high = low_all[pick], lo[low_all[pick]] + offsets[pick]
    else:
        low, high = _sparse_draw(rng, weight / weight.sum(), lo, n, count)
    rejected, chosen = order[low], order[high]
    return pd.DataFrame({
        "chosen_index": chosen, "rejected_index": rejected, "chosen_reward": r[chosen], "rejected_reward": r[rejected],
    })  # fmt: skip


def _sparse_draw(rng, p, lo, n, count):
    """Distinct allowed pairs by rejection of repeats (the request is < 1/4 of all allowed pairs)."""
    seen: dict[tuple[int, int], None] = {}  # insertion-ordered set: deterministic output order
    while len(seen) < count:
        need = count - len(seen)
        # Rejected ~ its number of partners, then chosen uniform among its partners: together a
        # uniform draw over all allowed pairs.
        low = rng.choice(n, size=2 * need + 16, p=p)
        high = lo[low] + np.floor(rng.random(len(low)) * (n - lo[low])).astype(np.int64)
        for a, b in zip(low.tolist(), high.tolist()):
            seen.setdefault((a, b))
            if len(seen) == count:
                break
    return np.array(list(seen)).T


def pairs_frame(samples: pd.DataFrame, prompt: str, **rule) -> pd.DataFrame:
    """Pairs as the trainer reads them: `prompt`, `chosen`, `rejected` texts plus rewards and indices."""
    idx = build_pairs(samples["reward"].to_numpy(), **rule)
    return pd.DataFrame({
        "prompt": prompt,
        "chosen": samples["text"].to_numpy()[idx["chosen_index"]],
        "rejected": samples["text"].to_numpy()[idx["rejected_index"]],
        "chosen_reward": idx["chosen_reward"], "rejected_reward": idx["rejected_reward"],
        "chosen_index": idx["chosen_index"], "rejected_index": idx["rejected_index"],
    })  # fmt: skip
