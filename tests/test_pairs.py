import numpy as np
import pytest

from prefalign.engine.pair_rules import PairError, build_pairs, pairs_frame


@pytest.mark.parametrize("strategy", ["random", "margin", "threshold"])
def test_chosen_always_beats_rejected_and_count_is_exact(scored_samples, strategy):
    pairs = build_pairs(scored_samples.reward, strategy=strategy, count=500, margin=1.0, threshold=0.5, seed=0)
    assert len(pairs) == 500
    assert (pairs.chosen_reward > pairs.rejected_reward).all()
    assert (pairs.chosen_index != pairs.rejected_index).all()


@pytest.mark.parametrize("strategy", ["random", "margin", "threshold"])
def test_pairs_are_distinct(scored_samples, strategy):
    pairs = build_pairs(scored_samples.reward, strategy=strategy, count=2000, seed=0)
    assert not pairs.duplicated(["chosen_index", "rejected_index"]).any()


def test_margin_pairs_respect_the_gap(scored_samples):
    pairs = build_pairs(scored_samples.reward, strategy="margin", count=500, margin=1.0, seed=0)
    assert (pairs.chosen_reward - pairs.rejected_reward > 1.0).all()


def test_threshold_pairs_straddle_the_threshold(scored_samples):
    pairs = build_pairs(scored_samples.reward, strategy="threshold", count=500, threshold=0.5, seed=0)
    assert (pairs.rejected_reward < 0.5).all()
    assert (pairs.chosen_reward >= 0.5).all()


def test_rewards_match_the_sample_indices(scored_samples):
    pairs = build_pairs(scored_samples.reward, strategy="random", count=100, seed=3)
    r = scored_samples.reward.to_numpy()
    np.testing.assert_array_equal(pairs.chosen_reward, r[pairs.chosen_index])
    np.testing.assert_array_equal(pairs.rejected_reward, r[pairs.rejected_index])


@pytest.mark.parametrize("strategy", ["random", "margin", "threshold"])
def test_same_seed_same_pairs_other_seed_other_pairs(scored_samples, strategy):
    a = build_pairs(scored_samples.reward, strategy=strategy, count=300, seed=1)
    b = build_pairs(scored_samples.reward, strategy=strategy, count=300, seed=1)
    c = build_pairs(scored_samples.reward, strategy=strategy, count=300, seed=2)
    assert a.equals(b)
    assert not a.equals(c)


def test_random_pairs_cover_every_allowed_pair_when_asked_for_all():
    rewards = [0.0, 1.0, 2.0, 3.0]
    pairs = build_pairs(rewards, strategy="random", count=6, seed=0)
    assert set(zip(pairs.rejected_index, pairs.chosen_index)) == {(i, j) for i in range(4) for j in range(i + 1, 4)}


def test_random_pairs_are_roughly_uniform():
    # 5 samples -> 10 allowed pairs; drawing 3 of 10 many times should hit each pair ~30% of the time.
    rewards = [0.0, 1.0, 2.0, 3.0, 4.0]
    hits = np.zeros((5, 5))
    for seed in range(400):
        p = build_pairs(rewards, strategy="random", count=3, seed=seed)
        hits[p.rejected_index, p.chosen_index] += 1
    freq = hits[np.triu_indices(5, 1)] / 400
    assert np.all(np.abs(freq - 0.3) < 0.1)


def test_ties_are_never_pairs():
    pairs = build_pairs([1.0, 1.0, 1.0, 2.0], strategy="random", count=3, seed=0)
    assert (pairs.chosen_index == 3).all()
    with pytest.raises(PairError, match="allow only 3"):
        build_pairs([1.0, 1.0, 1.0, 2.0], strategy="random", count=4, seed=0)


def test_threshold_without_samples_below_says_why():
    with pytest.raises(PairError, match=r"0 samples have reward < threshold=0.5"):
        build_pairs([1.0, 2.0, 3.0], strategy="threshold", count=1, threshold=0.5)


def test_margin_larger_than_the_reward_span_says_why():
    with pytest.raises(PairError, match="no two samples differ in reward by more than margin=5"):
        build_pairs([0.0, 1.0, 2.0], strategy="margin", count=1, margin=5.0)


def test_identical_rewards_cannot_make_random_pairs():
    with pytest.raises(PairError, match="same reward"):
        build_pairs([0.5] * 10, strategy="random", count=1)


def test_asking_for_more_pairs_than_exist_fails_instead_of_looping():
    with pytest.raises(PairError, match="asked for 5 distinct pairs"):
        build_pairs([0.0, 1.0, 2.0], strategy="threshold", threshold=0.5, count=5)


def test_pairs_frame_carries_texts_and_prompt(scored_samples):
    df = pairs_frame(scored_samples, "<|endoftext|>", strategy="random", count=50, seed=0)
    assert list(df.columns[:5]) == ["prompt", "chosen", "rejected", "chosen_reward", "rejected_reward"]
    assert (df.prompt == "<|endoftext|>").all()
    texts = scored_samples.text.to_numpy()
    assert (df.chosen == texts[df.chosen_index]).all() and (df.rejected == texts[df.rejected_index]).all()
