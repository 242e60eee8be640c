"""Build chosen/rejected pairs from scored samples: the `pairs` stage.

The original experiment drew two samples at random and called the higher-reward one chosen. Rules:

- `random`: two distinct samples drawn uniformly; the higher reward is chosen.
- `margin`: as random, restricted to pairs whose reward gap exceeds `margin`.
- `threshold`: one sample with reward < `threshold` (rejected) and one with reward >= it (chosen).
- `quantile`: chosen from the top `q` fraction by reward, rejected from the bottom `q`: a clear
  preference signal without a hand-picked threshold.
- `best_worst`: one pair per group of samples, its best against its worst (the common recipe when
  several completions are sampled per prompt).
- `stratified`: chosen rewards spread evenly over `interval` (equal quotas per bin), so training
  sees a flat density of chosen rewards instead of the sample distribution's bulge.
- `bradley_terry`: the couples of `random`, each labelled as a Bradley-Terry rater scoring texts by
  reward would: the higher reward chosen with probability sigmoid(gap), else the lower. DPO's
  optimum on such labels is the reference policy tilted by exp(reward / beta), a fixed point that
  further training does not move past; on always-right labels the optimum runs off towards the
  highest reward alone.

Every rule draws *distinct* pairs (no (i, j) twice), and exact reward ties are never pairs (there
is no preference to learn). `random`, `margin`, `threshold` and `quantile` draw uniformly from the
pairs they allow. The number of allowed pairs is counted exactly first, so a request that cannot be
met stops with a message saying why instead of looping or writing a short file.

`groups` (one id per sample, e.g. the prompt it was generated from) confines every rule to pairs
within a group: comparing completions of different prompts mixes prompt difficulty into the
preference. Run alone with:

    prefalign pairs CONFIG
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from prefalign.errors import PrefalignError

# Every pair rule, in the order configs, tables and plots list them.
PAIR_RULES = ("random", "margin", "threshold", "best_worst", "stratified", "quantile", "bradley_terry")


class PairError(PrefalignError, ValueError):
    """The samples cannot give the pairs asked for (or the rule's settings are impossible)."""


def most_distinct_pairs(
    n: int, strategy: str, group_size: int = 4, per_prompt: int | None = None, sizes: list[int] | None = None
) -> int:
    """The most distinct pairs `strategy` can draw from `n` samples whatever their rewards (every reward
    different): one per group of 2+ samples for `best_worst`, else every couple within a group. Groups:
    `sizes` (one per distinct prompt) when known, else prompts of `per_prompt` samples (the last shorter),
    all samples, or blocks of `group_size` for `best_worst`. The plan checks `pairs.count` against it."""
    size = max(1, per_prompt or (group_size if strategy == "best_worst" else n))
    sizes = sizes if sizes is not None else [size] * (n // size) + ([n % size] if n % size else [])
    if strategy == "best_worst":
        return sum(1 for g in sizes if g >= 2)
    return sum(g * (g - 1) // 2 for g in sizes)


def build_pairs(
    rewards,
    strategy: str,
    count: int,
    margin: float = 1.0,
    threshold: float = 0.5,
    seed: int = 0,
    *,
    groups=None,
    group_size: int = 4,
    interval: tuple[float, float] = (0.0, 2.5),
    bins: int = 10,
    margin_floor: float = 0.0,
    q: float = 0.25,
) -> pd.DataFrame:
    """Return `count` distinct (chosen, rejected) index pairs with their rewards.

    Columns: `chosen_index`, `rejected_index`, `chosen_reward`, `rejected_reward`;
    chosen_reward > rejected_reward (by more than `margin` for `margin`, by more than `margin_floor`
    for `stratified`) except for `bradley_terry`'s pairs labelled the other way (never a tie). With
    `groups`, both indices of every pair share a group id.
    """
    sample_rewards = np.asarray(rewards, dtype=np.float64)
    n = len(sample_rewards)
    _check_request(strategy, n, margin, margin_floor)
    group_of = _group_codes(groups, n)
    rng = np.random.default_rng(seed)
    if strategy == "best_worst":
        return _best_worst(sample_rewards, group_of, groups is not None, group_size, count, rng)
    order, sorted_rewards, sorted_groups, start, end = _layout(sample_rewards, group_of)
    if strategy == "stratified":
        chosen, rejected = _stratified(
            sorted_rewards, sorted_groups, start, order, interval, bins, margin_floor, count, rng
        )
        return _frame(sample_rewards, chosen, rejected)

    scope = _group_scope(group_of) if groups is not None else ""
    layout = (sorted_rewards, sorted_groups, start, end)
    first_partner, may_reject, why, short, advice = _partners(
        strategy, layout, groups is not None, margin, threshold, q, scope
    )
    # weight[p] = number of partners the sample at sorted position p can be rejected against.
    weight = np.where(may_reject, end - first_partner, 0).astype(np.int64)
    available = int(weight.sum())
    if available == 0:
        raise PairError(f"{strategy}: cannot build any pair: {why}{scope}")
    if available < count:
        raise PairError(
            f"{strategy}: asked for {count} distinct pairs but the {n} samples allow only {available} "
            f"({short}{scope}); {advice}"
        )
    low, high = _draw(rng, weight, first_partner, end, count)
    chosen, rejected = order[high], order[low]
    if strategy == "bradley_terry":
        # The rater keeps the higher reward with probability sigmoid(gap): flipped with sigmoid(-gap).
        gap = sample_rewards[chosen] - sample_rewards[rejected]
        flip = rng.random(count) < 1 / (1 + np.exp(gap))
        chosen, rejected = np.where(flip, rejected, chosen), np.where(flip, chosen, rejected)
    return _frame(sample_rewards, chosen, rejected)


def _group_scope(group_of) -> str:
    sizes = np.bincount(group_of)
    return f"; pairs stay within a group: {len(sizes)} groups of {sizes.min()}..{sizes.max()} samples"


def _check_request(strategy: str, n: int, margin: float, margin_floor: float) -> None:
    if strategy not in PAIR_RULES:
        raise ValueError(f"unknown pair strategy {strategy!r}")
    if n < 2:
        raise PairError(f"{strategy}: need at least 2 samples, got {n}")
    if min(margin, margin_floor) < 0:  # a negative gap would let a sample pair with itself or a lower one
        raise PairError(f"{strategy}: margin and margin_floor must be >= 0, got {margin} and {margin_floor}")


def _partners(strategy: str, layout, grouped: bool, margin: float, threshold: float, q: float, scope: str):
    """For every sorted position p: the first position (in p's group) whose sample may be chosen over
    p, and whether p may be rejected at all; with the words that explain a shortfall
    (why, short, advice)."""
    sorted_rewards, sorted_groups, start, end = layout
    n = len(sorted_rewards)
    positions = np.arange(n)
    may_reject = np.ones(n, bool)
    advice = "lower pairs.count or sample more"
    span = f"rewards span {sorted_rewards[0]:.3f}..{sorted_rewards[-1]:.3f}"
    if strategy in ("random", "bradley_terry"):
        first_partner = _search(sorted_groups, sorted_rewards, sorted_groups, sorted_rewards, "right")
        why = "no group holds two different rewards" if grouped else "all samples have the same reward"
        return first_partner, may_reject, why, "ties excluded", advice
    if strategy == "margin":
        first_partner = _search(sorted_groups, sorted_rewards, sorted_groups, sorted_rewards + margin, "right")
        why = f"no two samples differ in reward by more than margin={margin} ({span})"
        return first_partner, may_reject, why, why, advice
    if strategy == "threshold":
        first_partner = _search(sorted_groups, sorted_rewards, sorted_groups, np.full(n, float(threshold)), "left")
        may_reject = positions < first_partner
        n_below = int(may_reject.sum())
        why = (
            f"{n_below} samples have reward < threshold={threshold} and {n - n_below} have reward >= it "
            f"({span}); both sides need samples"
        )
        return first_partner, may_reject, why, why, advice
    # quantile, taken within each group
    if not 0 < q <= 0.5:
        raise PairError(f"quantile: q must be in (0, 0.5], got {q}")
    # The epsilon keeps floor(0.29 * 100) at 29 despite 0.29 * 100 == 28.999999999999996.
    k = np.floor(q * (end - start) + 1e-9).astype(np.int64)
    if k.max() == 0:
        raise PairError(
            f"quantile: floor(q * {(end - start).max()} samples) = 0 at q={q}: no sample on either side"
            f"{scope}; raise q (at most 0.5) or sample more"
        )
    above_ties = _search(sorted_groups, sorted_rewards, sorted_groups, sorted_rewards, "right")
    side = "sides taken per group" if grouped else f"{k.max()} samples a side"
    why = f"the top and bottom q={q} ({side}) all share one reward"
    short = f"top x bottom q={q}, {side}, ties excluded"
    return (
        np.maximum(end - k, above_ties),
        positions < start + k,
        why,
        short,
        "lower pairs.count, raise q or sample more",
    )


def _draw(rng, weight, first_partner, end, count: int):
    """`count` distinct (low, high) sorted positions, each allowed pair equally likely."""
    available = int(weight.sum())
    if count * 4 >= available:
        # Dense request: enumerate every allowed pair and pick without replacement.
        low_all = np.repeat(np.arange(len(weight)), weight)
        offsets = np.arange(available) - np.repeat(np.cumsum(weight) - weight, weight)
        pick = rng.choice(available, size=count, replace=False)
        return low_all[pick], first_partner[low_all[pick]] + offsets[pick]
    return _sparse_draw(rng, weight / weight.sum(), first_partner, end, count)


def _frame(sample_rewards, chosen, rejected) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "chosen_index": chosen,
            "rejected_index": rejected,
            "chosen_reward": sample_rewards[chosen],
            "rejected_reward": sample_rewards[rejected],
        }
    )


def _group_codes(groups, n):
    """Group ids as integer codes 0..G-1 (all zeros without groups: one group holding every sample)."""
    if groups is None:
        return np.zeros(n, np.int64)
    ids = np.asarray(groups)
    if ids.shape != (n,):
        raise PairError(f"groups must hold one id per sample: got shape {ids.shape} for {n} samples")
    return np.unique(ids, return_inverse=True)[1].reshape(n).astype(np.int64)


def _layout(sample_rewards, group_of):
    """Sort by (group, reward, index): each group is a contiguous run of sorted positions, ascending.

    Returns the order, sorted rewards and group codes, and each position's group run [start, end).
    Without groups this is exactly a stable argsort of the rewards.
    """
    order = np.lexsort((sample_rewards, group_of))
    sorted_rewards, sorted_groups = sample_rewards[order], group_of[order]
    group_start = np.searchsorted(sorted_groups, sorted_groups, "left")
    group_end = np.searchsorted(sorted_groups, sorted_groups, "right")
    return order, sorted_rewards, sorted_groups, group_start, group_end


def _search(sorted_groups, sorted_rewards, query_groups, query_values, side):
    """np.searchsorted of the keys (query_groups, query_values) into the (group, reward)-sorted samples:
    exact, vectorised.

    Queries and samples are merged in one lexicographic sort; a query's answer is the number of
    samples before it. On equal keys samples go first for side="right", after for side="left".
    """
    m = len(sorted_rewards)
    tie = np.r_[np.full(m, side == "left"), np.full(len(query_values), side == "right")]
    merged = np.lexsort((tie, np.r_[sorted_rewards, query_values], np.r_[sorted_groups, query_groups]))
    is_sample = merged < m
    before = np.cumsum(is_sample) - is_sample
    out = np.empty(len(query_values), np.int64)
    out[merged[~is_sample] - m] = before[~is_sample]
    return out


def _sparse_draw(rng, p, first_partner, hi, count):
    """Distinct allowed pairs by rejection of repeats (the request is < 1/4 of all allowed pairs)."""
    n = len(first_partner)
    seen: dict[tuple[int, int], None] = {}  # insertion-ordered set: deterministic output order
    while len(seen) < count:
        need = count - len(seen)
        # Rejected ~ its number of partners, then chosen uniform among its partners [lo, hi): together
        # a uniform draw over all allowed pairs.
        low = rng.choice(n, size=2 * need + 16, p=p)
        high = first_partner[low] + np.floor(rng.random(len(low)) * (hi[low] - first_partner[low])).astype(np.int64)
        for a, b in zip(low.tolist(), high.tolist()):
            seen.setdefault((a, b))
            if len(seen) == count:
                break
    return np.array(list(seen)).T


def _best_worst(sample_rewards, group_of, grouped, group_size, count, rng) -> pd.DataFrame:
    """One pair per group: the highest reward chosen over the lowest (ties: lowest sample index).

    Without `groups` the groups are consecutive blocks of `group_size` samples: the samples are
    i.i.d., so consecutive blocks are random groups (a trailing single sample cannot make a pair).
    """
    n = len(sample_rewards)
    if not grouped:
        if int(group_size) != group_size or group_size < 2:
            raise PairError(f"best_worst: group_size must be an integer >= 2, got {group_size}")
        group_of = np.arange(n) // int(group_size)
    order, sorted_rewards, sorted_groups, _, _ = _layout(sample_rewards, group_of)
    # lowest reward, lowest index among ties
    first = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    last = np.r_[first[1:], n] - 1
    # first position holding the group's highest reward
    top = _search(sorted_groups, sorted_rewards, sorted_groups[last], sorted_rewards[last], "left")
    qualify = np.flatnonzero(sorted_rewards[first] < sorted_rewards[last])
    if len(qualify) < count:
        n_groups = int(np.sum(last > first))
        kind = "groups given" if grouped else f"blocks of group_size={group_size}"
        fix = "sample more per group" if grouped else "sample more, use a smaller group_size,"
        fix += " or lower pairs.count"
        raise PairError(
            f"best_worst: asked for {count} pairs but only {len(qualify)} of the {n_groups} {kind} "
            f"(with 2+ samples, from {n} samples) hold two different rewards, one pair each; "
            f"{fix}"
        )
    pick = qualify[rng.choice(len(qualify), size=count, replace=False)]
    return _frame(sample_rewards, order[top[pick]], order[first[pick]])


def _stratified(sorted_rewards, sorted_groups, start, order, interval, bins, margin_floor, count, rng):
    """Chosen rewards with a flat density over `interval`: equal quotas per equal-width bin.

    Bins follow np.histogram(range=interval): [e_i, e_i+1), the last closed. A bin's chosen is drawn
    uniformly from its samples that still have an unused partner, its rejected uniformly from that
    sample's unused partners: same-group samples with reward < chosen - `margin_floor`. Drawing
    chosen-first (not pair-uniform) keeps the density flat inside each bin too; pair-uniform would
    favour high rewards, which have more partners.
    """
    low, high = (float(x) for x in interval)
    if not low < high or int(bins) != bins or bins < 1 or margin_floor < 0:
        raise PairError(
            f"stratified: need low < high, bins >= 1 and margin_floor >= 0; got interval={interval}, "
            f"bins={bins}, margin_floor={margin_floor}"
        )
    bins = int(bins)
    edges = np.linspace(low, high, bins + 1)
    inside = (sorted_rewards >= low) & (sorted_rewards <= high)
    b = np.where(sorted_rewards == high, bins - 1, np.searchsorted(edges, sorted_rewards, "right") - 1)
    # partners of p: positions [start, start + w)
    partners = _search(sorted_groups, sorted_rewards, sorted_groups, sorted_rewards - margin_floor, "left") - start
    quota = count // bins + (np.arange(bins) < count % bins)
    members = np.bincount(b[inside], minlength=bins)
    allowed = np.bincount(b[inside], weights=partners[inside], minlength=bins).astype(np.int64)
    short = np.flatnonzero(allowed < quota)
    if len(short):
        desc = "; ".join(
            f"bin [{edges[i]:.4g}, {edges[i + 1]:.4g}{']' if i == bins - 1 else ')'} holds "
            f"{members[i]} samples allowing {allowed[i]} distinct pairs, needs {quota[i]}"
            for i in short[:3]
        )
        more = f" (and {len(short) - 3} more bins)" if len(short) > 3 else ""
        raise PairError(
            f"stratified: {count} pairs over {bins} bins of {interval}: {desc}{more}; use a narrower "
            "interval, fewer bins, fewer pairs, or sample more"
        )
    chosen, rejected = [], []
    for i in range(bins):
        cand = np.flatnonzero(inside & (b == i) & (partners > 0))
        times = _capped_counts(rng, partners[cand], int(quota[i]))
        owner, offset = _distinct_offsets(rng, times, partners[cand])
        chosen.append(cand[owner])
        rejected.append(start[cand[owner]] + offset)
    perm = rng.permutation(count)  # rows in random order, not bin by bin
    return order[np.concatenate(chosen)[perm]], order[np.concatenate(rejected)[perm]]


def _capped_counts(rng, cap, total):
    """How often each candidate is picked when every pick is uniform over candidates picked < cap times.

    Batched: draws hitting a candidate that filled up earlier in the batch are dropped and drawn
    again next round from the candidates still open, which is the same as the one-by-one process.
    """
    times = np.zeros(len(cap), np.int64)
    while (need := total - int(times.sum())) > 0:
        open_ = np.flatnonzero(times < cap)
        d = open_[rng.integers(len(open_), size=need)]
        by = np.argsort(d, kind="stable")
        rank = np.empty(need, np.int64)  # how many earlier draws in this batch hit the same candidate
        rank[by] = np.arange(need) - np.searchsorted(d[by], d[by], "left")
        times += np.bincount(d[times[d] + rank < cap[d]], minlength=len(cap))
    return times


def _distinct_offsets(rng, times, width):
    """For each k, times[k] distinct offsets uniform in [0, width[k]); returns (owner, offset) arrays.

    Owners needing >= 1/4 of their range rank all its offsets by random keys (this enumerates at
    most 4 * sum(times) offsets); the others draw with replacement and redraw repeats.
    """
    dense = 4 * times >= width
    dk = np.flatnonzero(dense & (times > 0))
    own = np.repeat(dk, width[dk])
    base = np.repeat(np.cumsum(width[dk]) - width[dk], width[dk])
    by_key = np.lexsort((rng.random(len(own)), own))  # per owner, a random order of its offsets
    keep = np.arange(len(own)) - base < times[own]
    d_owner, d_offset = own[keep], (np.arange(len(own)) - base)[by_key][keep]
    sk = np.flatnonzero(~dense)
    s_owner = np.repeat(sk, times[sk])
    s_offset = np.floor(rng.random(len(s_owner)) * width[s_owner]).astype(np.int64)
    while len(s_owner):
        key = s_owner * (int(width.max()) + 1) + s_offset
        repeat = np.ones(len(key), bool)
        repeat[np.unique(key, return_index=True)[1]] = False
        if not repeat.any():
            break
        s_offset[repeat] = np.floor(rng.random(int(repeat.sum())) * width[s_owner[repeat]]).astype(np.int64)
    return np.r_[d_owner, s_owner], np.r_[d_offset, s_offset]


def pairs_frame(samples: pd.DataFrame, prompt: str, **rule) -> pd.DataFrame:
    """Pairs as the trainer reads them: `prompt`, `chosen`, `rejected` texts plus rewards and indices.

    If `samples` has a `prompt` column, pairs stay within a prompt (completions of different prompts
    are not comparable) and each row's prompt is `prompt` (the BOS token) followed by its own prompt.
    """
    grouped = "prompt" in samples.columns
    groups = samples["prompt"].to_numpy() if grouped else None
    idx = build_pairs(samples["reward"].to_numpy(), groups=groups, **rule)
    prompts = [prompt + str(p) for p in groups[idx["chosen_index"]]] if grouped else prompt
    return pd.DataFrame(
        {
            "prompt": prompts,
            "chosen": samples["text"].to_numpy()[idx["chosen_index"]],
            "rejected": samples["text"].to_numpy()[idx["rejected_index"]],
            "chosen_reward": idx["chosen_reward"],
            "rejected_reward": idx["rejected_reward"],
            "chosen_index": idx["chosen_index"],
            "rejected_index": idx["rejected_index"],
        }
    )
