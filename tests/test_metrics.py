import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefalign.engine.metrics import broken_share, diversity, run_summary, token_entropy


def test_entropy_of_hand_counted_ids():
    # counts {1: 2, 2: 1, 3: 1} over 4 tokens -> -(1/2 ln 1/2 + 2 * 1/4 ln 1/4)
    expected = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert token_entropy([[1, 1], [2, 3]]) == pytest.approx(expected)


def test_entropy_counts_over_all_texts_not_per_text():
    # Each text alone has entropy 0; together they are uniform over 2 ids: ln 2.
    assert token_entropy([[5, 5, 5], [7, 7, 7]]) == pytest.approx(math.log(2))


def test_entropy_drops_pad_ids():
    assert token_entropy([[1, 2, 0, 0, 0]], pad_id=0) == pytest.approx(math.log(2))


def test_entropy_is_in_nats_and_uniform_gives_log_n():
    assert token_entropy([list(range(10))]) == pytest.approx(math.log(10))


def test_entropy_of_nothing_is_zero():
    assert token_entropy([[], []]) == 0.0
    assert token_entropy([[0, 0]], pad_id=0) == 0.0


def test_diversity_retokenizes_with_policy_tokenizer_without_special_tokens(tiny_policy):
    _, tok = tiny_policy
    texts = ["The film was great.", "The plot is dull."]
    ids = [tok.encode(t, add_special_tokens=False) for t in texts]
    assert tok.bos_token_id not in sum(ids, [])
    assert diversity(texts, tok) == pytest.approx(token_entropy(ids, tok.pad_token_id))


def test_run_summary():
    s = run_summary([1.0, 3.0], [True, False])
    assert s == {"reward_mean": 2.0, "reward_std": 1.0, "positive_rate": 0.5}


# ---- issue 5 metrics: hand-computed cases ------------------------------------------------------


def test_distinct_n_counts_over_all_texts_without_crossing_them():
    from prefalign.engine.metrics import distinct_n

    texts = [[1, 2, 1, 2], [2, 1]]
    # unigrams: 6 tokens, {1, 2} distinct -> 2/6; bigrams: (1,2),(2,1),(1,2) + (2,1) -> 2 distinct of 4
    assert distinct_n(texts, 1) == pytest.approx(2 / 6)
    assert distinct_n(texts, 2) == pytest.approx(2 / 4)
    # no bigram spans the two texts [3] and [4]
    assert distinct_n([[3], [4]], 2) == 0.0
    assert distinct_n([[1, 2, 3]], 3) == 1.0


def _counted_by_hand(texts, n, pad_id=None):
    """token_entropy and distinct_n written out with Python counters: what the numpy versions must equal."""
    from collections import Counter

    counts = Counter(i for ids in texts for i in ids if i != pad_id)
    total = sum(counts.values())
    entropy = -sum(c / total * math.log(c / total) for c in counts.values()) if total else 0.0
    grams = [tuple(ids[i : i + n]) for ids in texts for i in range(len(ids) - n + 1)]
    return entropy, len(set(grams)) / len(grams) if grams else 0.0


@given(
    st.lists(st.lists(st.integers(0, 60_000), max_size=12), max_size=8),
    st.integers(1, 4),
    st.one_of(st.none(), st.integers(0, 3)),
)
@settings(max_examples=300, deadline=None)
def test_entropy_and_distinct_n_equal_plain_counting(texts, n, pad_id):
    from prefalign.engine.metrics import distinct_n

    texts = [[i % 4 if i < 20_000 else i for i in ids] for ids in texts]  # repeats: small ids recur often
    entropy, distinct = _counted_by_hand(texts, n, pad_id)
    assert token_entropy(texts, pad_id) == pytest.approx(entropy, abs=1e-12)
    assert distinct_n(texts, n) == pytest.approx(distinct, abs=1e-12)
    assert distinct_n(iter(texts), n) == pytest.approx(distinct, abs=1e-12)  # any iterable of texts


def test_reward_profile_shares_and_percentiles():
    import numpy as np

    from prefalign.engine.metrics import reward_profile

    r = np.array([-1.0, 0.0, 0.25, 0.5, 2.0])
    out = reward_profile(r, thresholds=(0.0, 0.5), quantiles=(5, 50, 95))
    assert out["share_above_0"] == pytest.approx(3 / 5)  # strictly above: 0.0 does not count
    assert out["share_above_0.5"] == pytest.approx(1 / 5)
    assert out["reward_p50"] == 0.25
    # numpy linear interpolation: position 0.05 * 4 = 0.2 between -1 and 0
    assert out["reward_p05"] == pytest.approx(-0.8)
    assert out["reward_p95"] == pytest.approx(0.5 + 0.8 * 1.5)


def test_kl_estimate_per_sequence_and_per_token():
    from prefalign.engine.metrics import kl_estimate

    out = kl_estimate([-10.0, -4.0], [-12.0, -3.0], [4, 6])
    assert out["kl_seq"] == pytest.approx((2.0 + -1.0) / 2)
    assert out["kl_token"] == pytest.approx((2.0 - 1.0) / 10)
    assert kl_estimate([-3.0], [-3.0], [2]) == {"kl_seq": 0.0, "kl_token": 0.0}


def test_pareto_mask_keeps_exactly_the_undominated():
    import numpy as np

    from prefalign.engine.metrics import pareto_mask

    # columns: reward (max), diversity (max); KL (min)
    reward_div = np.array([[1.0, 5.0], [2.0, 4.0], [1.5, 3.0], [2.0, 4.0], [0.5, 6.0]])
    kl = np.array([[0.0], [3.0], [4.0], [2.0], [0.0]])
    # row 2 is dominated by row 1 (higher reward and diversity, lower KL); row 1 by row 3 (same
    # reward and diversity, lower KL); rows 0 and 4 trade reward for diversity at KL 0.
    assert pareto_mask(reward_div, kl).tolist() == [True, False, False, True, True]
    assert pareto_mask(reward_div).tolist() == [True, True, False, True, True]  # exact ties both stay
    assert pareto_mask(np.zeros((0, 2)), np.zeros((0, 1))).tolist() == []  # no candidates: an empty front


def test_broken_share_counts_texts_with_undecodable_bytes():
    from tokenizers import decoders  # GPT-2's byte-level decoder

    garbage = decoders.ByteLevel().decode(["\u00e2\u0122"])  # half of a UTF-8 sequence: decodes to U+FFFD
    assert "\ufffd" in garbage
    assert broken_share(["A fine film.", f"Great {garbage}", "", "ok"]) == 0.25
    assert broken_share([]) == 0.0
