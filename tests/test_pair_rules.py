"""Exact properties of the best_worst, stratified and quantile rules, and of `groups` for every rule."""

import numpy as np
import pandas as pd
import pytest

from prefalign.engine.pair_rules import PAIR_RULES, PairError, build_pairs, pairs_frame


def pair_set(p):
    return set(zip(p.chosen_index.tolist(), p.rejected_index.tolist()))


def normal_rewards(n=400, seed=0):
    return np.random.default_rng(seed).normal(0.5, 1.5, n)


# --- best_worst --------------------------------------------------------------------------------

# Blocks of 4: [1,5,5,1] -> (1, 0): ties go to the lowest index on both sides; [2,0,2,0] -> (4, 5);
# [3,3,3,3] has no preference; [4,9,-1,9] -> (13, 14); the trailing single sample 16 is dropped.
BLOCKS = [1, 5, 5, 1, 2, 0, 2, 0, 3, 3, 3, 3, 4, 9, -1, 9, 100]
BLOCK_PAIRS = {(1, 0), (4, 5), (13, 14)}


def test_best_worst_pairs_each_blocks_argmax_with_its_argmin():
    p = build_pairs(BLOCKS, "best_worst", count=3, group_size=4, seed=0)
    assert len(p) == 3
    assert pair_set(p) == BLOCK_PAIRS


def test_best_worst_picks_count_of_the_qualifying_groups_at_random_by_seed():
    picks = {frozenset(pair_set(build_pairs(BLOCKS, "best_worst", count=2, group_size=4, seed=s))) for s in range(30)}
    assert all(len(p) == 2 and p <= BLOCK_PAIRS for p in picks)
    assert len(picks) == 3  # every 2-subset of the 3 qualifying blocks turns up
    a = build_pairs(BLOCKS, "best_worst", count=2, group_size=4, seed=4)
    assert a.equals(build_pairs(BLOCKS, "best_worst", count=2, group_size=4, seed=4))


def test_best_worst_group_size_sets_the_blocks():
    # Blocks of 2: (1,5) (5,1) (2,0) (2,0) (3,3) (3,3) (4,9) (-1,9) (100) -> 6 qualify.
    p = build_pairs(BLOCKS, "best_worst", count=6, group_size=2, seed=0)
    assert pair_set(p) == {(1, 0), (2, 3), (4, 5), (6, 7), (13, 12), (15, 14)}


def test_best_worst_with_groups_uses_them_instead_of_blocks():
    r = normal_rewards(60, seed=1)
    g = np.random.default_rng(2).integers(0, 12, 60)
    p = build_pairs(r, "best_worst", count=12, groups=g, group_size=2, seed=0)
    expected = set()
    for k in range(12):
        members = np.flatnonzero(g == k)
        expected.add((members[np.argmax(r[members])], members[np.argmin(r[members])]))
    assert pair_set(p) == expected


def test_best_worst_too_few_groups_says_how_many_qualify_and_what_to_change():
    with pytest.raises(PairError, match=r"only 3 of the 4 blocks of group_size=4 .* smaller group_size.* pairs\.count"):
        build_pairs(BLOCKS, "best_worst", count=4, group_size=4)
    with pytest.raises(PairError, match="group_size must be an integer >= 2"):
        build_pairs(BLOCKS, "best_worst", count=1, group_size=1)


# --- stratified --------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [200, 203])
def test_stratified_chosen_histogram_is_exactly_the_quotas(count):
    r = normal_rewards()
    p = build_pairs(r, "stratified", count=count, interval=(0.0, 2.5), bins=10, seed=0)
    quotas = [count // 10 + (i < count % 10) for i in range(10)]
    hist = np.histogram(p.chosen_reward, bins=10, range=(0.0, 2.5))[0]
    assert hist.tolist() == quotas
    assert np.histogram(r, bins=10, range=(0.0, 2.5))[0].tolist() != sorted(quotas)  # the samples are not flat
    assert ((p.chosen_reward >= 0.0) & (p.chosen_reward <= 2.5)).all()
    assert (p.rejected_reward < p.chosen_reward).all()
    assert not p.duplicated(["chosen_index", "rejected_index"]).any()
    np.testing.assert_array_equal(p.chosen_reward, r[p.chosen_index])
    np.testing.assert_array_equal(p.rejected_reward, r[p.rejected_index])


def test_stratified_same_seed_same_pairs_other_seed_other_pairs():
    r = normal_rewards()
    a, b, c = (build_pairs(r, "stratified", count=100, seed=s) for s in (1, 1, 2))
    assert a.equals(b)
    assert not a.equals(c)


def test_stratified_bin_edges_follow_histogram_and_the_interval_end_is_included():
    # bins [0, 1.25) and [1.25, 2.5]: 0.0 is the only bin-0 sample with a partner; -1.0 lies outside.
    r = [-1.0, 0.0, 1.25, 2.5]
    p = build_pairs(r, "stratified", count=2, interval=(0.0, 2.5), bins=2, seed=0)
    assert (1, 0) in pair_set(p)
    assert np.histogram(p.chosen_reward, bins=2, range=(0.0, 2.5))[0].tolist() == [1, 1]
    # 2.5 is inside [0, 2.5], 2.6 is not (and 0.0 has no partner): exactly one pair.
    assert pair_set(build_pairs([0.0, 2.5, 2.6], "stratified", count=1, interval=(0.0, 2.5), bins=1)) == {(1, 0)}
    with pytest.raises(PairError, match="holds 2 samples allowing 1 distinct pairs, needs 2"):
        build_pairs([0.0, 2.5, 2.6], "stratified", count=2, interval=(0.0, 2.5), bins=1)


def test_stratified_asking_for_every_allowed_pair_gets_each_once():
    r = [0.0, 0.3, 0.6, 0.6, 1.8]  # chosen in [0.2, 2.0]: 0.3 > 1 sample, each 0.6 > 2 (not each other), 1.8 > 4
    p = build_pairs(r, "stratified", count=9, interval=(0.2, 2.0), bins=1, seed=0)
    assert pair_set(p) == {(1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (4, 0), (4, 1), (4, 2), (4, 3)}
    with pytest.raises(PairError, match=r"holds 4 samples allowing 9 distinct pairs, needs 10"):
        build_pairs(r, "stratified", count=10, interval=(0.2, 2.0), bins=1)


def test_stratified_margin_floor_keeps_rejected_that_much_lower():
    r = normal_rewards()
    p = build_pairs(r, "stratified", count=100, margin_floor=1.0, seed=0)
    assert (p.chosen_reward - p.rejected_reward > 1.0).all()
    # Only 2.0 has a partner more than 1.5 below it.
    assert pair_set(
        build_pairs([0.0, 1.0, 2.0], "stratified", count=1, interval=(0.5, 2.5), bins=1, margin_floor=1.5)
    ) == {(2, 0)}
    with pytest.raises(PairError, match="holds 2 samples allowing 1 distinct pairs, needs 2"):
        build_pairs([0.0, 1.0, 2.0], "stratified", count=2, interval=(0.5, 2.5), bins=1, margin_floor=1.5)


def test_stratified_empty_bin_names_the_bin_and_what_to_change():
    with pytest.raises(PairError, match=r"bin \[0\.5, 1\) holds 0 samples allowing 0 distinct pairs, needs 1") as e:
        build_pairs([0.1, 0.2, 2.4], "stratified", count=5, interval=(0.0, 2.5), bins=5)
    assert "narrower interval, fewer bins, fewer pairs, or sample more" in str(e.value)
    assert "[0, 0.5)" not in str(e.value) and "[2, 2.5]" not in str(e.value)  # those bins can fill their quota


def test_stratified_chosen_is_uniform_within_a_bin_not_weighted_by_partners():
    # Rewards 0..9, one bin over [0.5, 9.5]: chosen k has k partners. Uniform chosen gives each 1/9;
    # a pair-uniform draw would give 1.0 only 1/45.
    hits = sum(
        build_pairs(np.arange(10.0), "stratified", count=1, interval=(0.5, 9.5), bins=1, seed=s).chosen_index[0] == 1
        for s in range(400)
    )
    assert 25 <= hits <= 70


# --- quantile ----------------------------------------------------------------------------------


def test_quantile_pairs_top_q_against_bottom_q_and_counts_exactly():
    r = np.random.default_rng(3).permutation(20).astype(float)  # top 5 are 15..19, bottom 5 are 0..4
    p = build_pairs(r, "quantile", count=25, q=0.25, seed=0)
    assert pair_set(p) == {(c, j) for c in np.flatnonzero(r >= 15) for j in np.flatnonzero(r <= 4)}
    with pytest.raises(PairError, match="asked for 26 distinct pairs but the 20 samples allow only 25"):
        build_pairs(r, "quantile", count=26, q=0.25)


def test_quantile_sparse_draw_stays_in_the_tails_and_is_distinct():
    r = normal_rewards()
    s = np.sort(r)
    p = build_pairs(r, "quantile", count=300, q=0.25, seed=0)  # 300 of 100 x 100: the sparse path
    assert (p.chosen_reward >= s[-100]).all() and (p.rejected_reward <= s[99]).all()
    assert not p.duplicated(["chosen_index", "rejected_index"]).any()
    assert p.equals(build_pairs(r, "quantile", count=300, q=0.25, seed=0))
    assert not p.equals(build_pairs(r, "quantile", count=300, q=0.25, seed=1))


def test_quantile_excludes_ties_between_the_sides():
    # q=0.5: bottom is samples 0, 1 (rewards 0, 1), top is 2, 3 (rewards 1, 1): 1 vs 1 is no pair.
    p = build_pairs([0.0, 1.0, 1.0, 1.0], "quantile", count=2, q=0.5, seed=0)
    assert pair_set(p) == {(2, 0), (3, 0)}
    with pytest.raises(PairError, match="allow only 2"):
        build_pairs([0.0, 1.0, 1.0, 1.0], "quantile", count=3, q=0.5)


@pytest.mark.parametrize("q", [0.0, 0.6, -0.1])
def test_quantile_rejects_q_outside_zero_to_half(q):
    with pytest.raises(PairError, match=r"q must be in \(0, 0.5\]"):
        build_pairs([0.0, 1.0, 2.0, 3.0], "quantile", count=1, q=q)


def test_quantile_side_of_zero_samples_says_raise_q():
    with pytest.raises(PairError, match=r"floor\(q \* 3 samples\) = 0 at q=0.25.*raise q"):
        build_pairs([0.0, 1.0, 2.0], "quantile", count=1, q=0.25)


def test_quantile_with_groups_takes_the_tails_within_each_group():
    r = normal_rewards(80, seed=5)
    g = np.repeat(np.arange(10), 8)[np.random.default_rng(6).permutation(80)]  # 10 groups of 8: tails of 2
    p = build_pairs(r, "quantile", count=30, q=0.25, groups=g, seed=0)
    for c, j in pair_set(p):
        members = np.flatnonzero(g == g[c])
        ranked = members[np.argsort(r[members], kind="stable")]
        assert g[j] == g[c] and c in ranked[-2:] and j in ranked[:2]
    assert len(build_pairs(r, "quantile", count=40, q=0.25, groups=g)) == 40  # 10 groups x 2 x 2
    with pytest.raises(PairError, match="allow only 40"):
        build_pairs(r, "quantile", count=41, q=0.25, groups=g)


# --- bradley_terry ------------------------------------------------------------------------------


def test_bradley_terry_labels_random_couples_as_a_rater_would():
    """The couples of `random` under the same seed; the lower reward chosen with probability sigmoid(-gap)."""
    r = np.r_[np.zeros(300), np.ones(300), np.full(300, 3.0)]  # gaps of exactly 1, 2 and 3 (ties are no pairs)
    couples = lambda p: {frozenset(c) for c in zip(p.chosen_index.tolist(), p.rejected_index.tolist())}  # noqa: E731
    rated, plain = build_pairs(r, "bradley_terry", count=6000, seed=4), build_pairs(r, "random", count=6000, seed=4)
    assert couples(rated) == couples(plain)
    high, low = (
        rated[["chosen_reward", "rejected_reward"]].max(axis=1),
        rated[["chosen_reward", "rejected_reward"]].min(axis=1),
    )
    for gap in (1.0, 2.0, 3.0):
        pairs = rated[(high - low) == gap]
        flipped = (pairs.chosen_reward < pairs.rejected_reward).mean()
        assert len(pairs) > 1000 and abs(flipped - 1 / (1 + np.exp(gap))) < 0.035, (gap, flipped)


# --- groups, every rule ------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", PAIR_RULES)
def test_no_pair_crosses_a_group(strategy):
    r = normal_rewards(600, seed=7)
    g = np.random.default_rng(8).integers(0, 30, 600).astype(str)
    p = build_pairs(r, strategy, count=30, groups=g, margin=1.0, threshold=0.5, seed=0)
    assert len(p) == 30
    assert (g[p.chosen_index] == g[p.rejected_index]).all()
    if strategy == "bradley_terry":  # some pairs labelled the other way, none a tie
        assert (p.chosen_reward != p.rejected_reward).all()
    else:
        assert (p.chosen_reward > p.rejected_reward).all()
    assert not p.duplicated(["chosen_index", "rejected_index"]).any()


def test_grouped_random_counts_only_within_group_pairs():
    r = [0.0, 1.0, 2.0, 5.0, 6.0]
    g = ["a", "a", "a", "b", "b"]
    p = build_pairs(r, "random", count=4, groups=g, seed=0)
    assert pair_set(p) == {(1, 0), (2, 0), (2, 1), (4, 3)}
    with pytest.raises(PairError, match=r"allow only 4 .*within a group: 2 groups of 2\.\.3 samples"):
        build_pairs(r, "random", count=5, groups=g)


def test_grouped_margin_and_threshold_count_exactly():
    r = [0.0, 2.0, 0.2, 0.3, 5.0]
    g = [0, 0, 1, 1, 2]
    assert pair_set(build_pairs(r, "margin", count=1, margin=1.0, groups=g)) == {(1, 0)}
    assert pair_set(build_pairs(r, "threshold", count=1, threshold=0.5, groups=g)) == {(1, 0)}
    with pytest.raises(PairError, match="allow only 1"):
        build_pairs(r, "threshold", count=2, threshold=0.5, groups=g)
    with pytest.raises(PairError, match="no group holds two different rewards"):
        build_pairs([1.0, 1.0, 2.0], "random", count=1, groups=[0, 0, 1])


def test_grouped_random_is_uniform_over_all_within_group_pairs():
    # Group a allows 3 pairs, group b 1: one pair in four must come from b, not one in two.
    r, g = [0.0, 1.0, 2.0, 5.0, 6.0], [0, 0, 0, 1, 1]
    from_b = sum(build_pairs(r, "random", count=1, groups=g, seed=s).chosen_index[0] == 4 for s in range(400))
    assert 70 <= from_b <= 130


def test_stratified_with_groups_keeps_global_quotas():
    r = normal_rewards(600, seed=9)
    g = np.random.default_rng(10).integers(0, 40, 600)
    p = build_pairs(r, "stratified", count=100, groups=g, seed=0)
    assert np.histogram(p.chosen_reward, bins=10, range=(0.0, 2.5))[0].tolist() == [10] * 10
    assert (g[p.chosen_index] == g[p.rejected_index]).all()


def test_groups_must_match_the_samples():
    with pytest.raises(PairError, match="one id per sample"):
        build_pairs([0.0, 1.0, 2.0], "random", count=1, groups=[0, 1])


# --- pairs_frame -------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["random", "best_worst"])
def test_pairs_frame_with_a_prompt_column_pairs_within_prompts(strategy):
    rng = np.random.default_rng(11)
    samples = pd.DataFrame(
        {
            "text": [f"t{i}" for i in range(120)],
            "reward": rng.normal(0.5, 1.5, 120),
            "prompt": [f"P{i % 15}" for i in range(120)],
        }
    )
    df = pairs_frame(samples, "<|endoftext|>", strategy=strategy, count=15, group_size=8, seed=0)
    assert list(df.columns) == [
        "prompt",
        "chosen",
        "rejected",
        "chosen_reward",
        "rejected_reward",
        "chosen_index",
        "rejected_index",
    ]
    prompts = samples.prompt.to_numpy()
    assert (prompts[df.chosen_index] == prompts[df.rejected_index]).all()
    assert (df.prompt == "<|endoftext|>" + prompts[df.chosen_index]).all()
    assert (df.chosen == samples.text.to_numpy()[df.chosen_index]).all()
    if strategy == "best_worst":  # one pair per prompt: every prompt once
        assert sorted(df.prompt) == sorted(f"<|endoftext|>P{k}" for k in range(15))


def test_pairs_frame_without_a_prompt_column_uses_the_given_prompt():
    samples = pd.DataFrame({"text": ["a", "b", "c", "d"], "reward": [0.0, 1.0, 2.0, 3.0]})
    df = pairs_frame(samples, "<s>", strategy="best_worst", count=1, group_size=4)
    assert df.prompt.tolist() == ["<s>"]
    assert (df.chosen[0], df.rejected[0]) == ("d", "a")


# --- the planning bound ------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", PAIR_RULES)
@pytest.mark.parametrize("n,per_prompt", [(9, None), (10, 4), (12, 3), (7, 2)])
def test_most_distinct_pairs_is_what_distinct_rewards_give(strategy, n, per_prompt):
    """With every reward different (and a rule setting that lets every couple through) the bound is
    exactly what build_pairs can draw: `most` pairs build, `most + 1` are refused."""
    from prefalign.engine.pair_rules import most_distinct_pairs

    rewards = np.random.default_rng(n).permutation(n).astype(float)
    groups = None if per_prompt is None else np.arange(n) // per_prompt
    wide = dict(margin=0.0, threshold=n / 2, interval=(-1.0, n), bins=1, q=0.5, group_size=3)
    most = most_distinct_pairs(n, strategy, group_size=3, per_prompt=per_prompt)
    assert most > 0
    if strategy in ("random", "bradley_terry", "best_worst", "margin"):  # rules that let every couple through here
        assert len(build_pairs(rewards, strategy, most, groups=groups, **wide)) == most
    with pytest.raises(PairError):
        build_pairs(rewards, strategy, most + 1, groups=groups, **wide)
    with pytest.raises(PairError, match="must be >= 0"):
        build_pairs(rewards, strategy, 1, groups=groups, **{**wide, "margin": -1.0})
