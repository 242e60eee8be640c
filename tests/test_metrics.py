import math

import pytest

from prefalign.metrics import diversity, run_summary, token_entropy


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
