"""Sampling and scoring on the tiny local models."""

import math

import numpy as np
import pytest
import torch

from prefalign.config.schema import SamplingConfig
from prefalign.engine.decoding import generate
from prefalign.engine.sample_file import sample_and_score
from prefalign.engine.scoring import score_texts

SAMPLING = SamplingConfig(max_length=24, batch_size=16)


def texts_of(policy, tok, n, seed, sampling=SAMPLING):
    return [t for chunk in generate(policy, tok, n, sampling, seed) for t in chunk["text"]]


def test_same_seed_same_texts_other_seed_other_texts(tiny_policy):
    policy, tok = tiny_policy
    a, b, c = texts_of(policy, tok, 40, 0), texts_of(policy, tok, 40, 0), texts_of(policy, tok, 40, 1)
    assert len(a) == 40 and a == b and a != c


def test_lengths_respect_max_length_and_special_tokens_are_skipped(tiny_policy):
    policy, tok = tiny_policy
    chunks = list(generate(policy, tok, 50, SAMPLING, 3))
    n_tokens = np.concatenate([c["n_tokens"] for c in chunks])
    texts = [t for c in chunks for t in c["text"]]
    assert n_tokens.max() <= SAMPLING.max_length - 1  # BOS counts toward max_length
    assert all(tok.bos_token not in t for t in texts)


def test_scores_are_the_positive_logit_in_input_order(tiny_classifier):
    clf, tok = tiny_classifier
    texts = ["The film was great and I loved it.", "Dull.", "The plot is awful , a waste of time.", "", "Superb!"]
    batched = score_texts(texts, clf, tok, positive_index=1, batch_size=2)  # length-sorted, several batches
    with torch.inference_mode():
        for i, text in enumerate(texts):
            logits = clf(**tok(text, return_tensors="pt")).logits[0]
            assert batched["reward"][i] == pytest.approx(float(logits[1]), abs=1e-4)
            assert batched["positive_prob"][i] == pytest.approx(float(logits.softmax(-1)[1]), abs=1e-5)
            assert batched["is_positive"][i] == bool(logits.argmax() == 1)


def test_scoring_adds_the_classifiers_special_tokens(tiny_classifier):
    clf, tok = tiny_classifier
    ids = tok("great film")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id


def test_classifier_truncates_long_texts(tiny_classifier):
    clf, tok = tiny_classifier
    out = score_texts(["great " * 2000], clf, tok, positive_index=1)
    assert np.isfinite(out["reward"]).all()


def test_sample_and_score_writes_every_column(tiny_policy, tiny_classifier, tmp_path):
    policy, ptok = tiny_policy
    clf, ctok = tiny_classifier
    df = sample_and_score(policy, ptok, clf, ctok, 1, 30, SAMPLING, 0, 8, tmp_path / "s.parquet")
    assert list(df.columns) == ["text", "reward", "positive_prob", "is_positive", "n_tokens"]
    assert len(df) == 30 and (tmp_path / "s.parquet").exists()
    assert not list(tmp_path.glob(".*tmp*"))
    assert ((df.positive_prob > 0.5) == df.is_positive).all()
    # Wall time by phase (no reference: no KL phase); the phases are parts of the whole.
    phases = df.attrs["phase_seconds"]
    assert list(phases) == ["decode", "texts", "score", "write"]
    assert phases["decode"] > 0  # (rounded to milliseconds: a shorter phase may be 0.0)
    assert sum(phases.values()) <= df.attrs["seconds"] + 1e-3


def test_fast_and_hf_engines_agree_when_sampling_is_greedy(tiny_policy):
    policy, tok = tiny_policy
    greedy = dict(max_length=24, batch_size=8, top_k=1)
    fast = texts_of(policy, tok, 8, 0, SamplingConfig(engine="fast", **greedy))
    hf = texts_of(policy, tok, 8, 0, SamplingConfig(engine="hf", **greedy))
    assert fast == hf and len(set(fast)) == 1


def test_top_k_top_p_filter_keeps_the_nucleus():
    from prefalign.engine.decoding import filter_top_k_top_p

    logits = torch.log(torch.tensor([[0.05, 0.5, 0.3, 0.15]]))
    ids, values = filter_top_k_top_p(logits, top_k=3, top_p=0.85)
    # top-3 = ids 1, 2, 3 (0.5, 0.3, 0.15); renormalised 0.526, 0.316, 0.158: 0.526 + 0.316 < 0.85 so id 3 stays.
    assert ids.tolist() == [[1, 2, 3]] and torch.isfinite(values).all()
    ids, values = filter_top_k_top_p(logits, top_k=0, top_p=0.7)
    # Full sort: 0.5 then 0.3 reaches 0.8 >= 0.7, so ids 3 and 0 are dropped.
    assert ids[0, :2].tolist() == [1, 2] and torch.isinf(values[0, 2:]).all()


def test_fast_engine_matches_hf_distribution(tiny_policy):
    # Same model, same settings: the share of texts ending early and the mean length agree closely.
    policy, tok = tiny_policy
    stats = {}
    for engine in ("fast", "hf"):
        cfg = SamplingConfig(max_length=24, batch_size=200, engine=engine)
        n = np.concatenate([c["n_tokens"] for c in generate(policy, tok, 600, cfg, 11)])
        stats[engine] = n.mean()
    assert abs(stats["fast"] - stats["hf"]) < 1.0, stats


def test_decoding_that_drops_finished_rows_late_writes_only_eos_after_the_first(tiny_policy):
    """The GPU setting (finished rows leave the batch every few steps) gives the same kind of texts."""
    from prefalign.engine.decoding import _fast_batch

    policy, tok = tiny_policy
    eos = tok.eos_token_id
    prompt = torch.full((400, 1), tok.bos_token_id)
    lengths, stopped = {}, {}
    for every in (1, 8):
        torch.manual_seed(0)
        tokens, _ = _fast_batch(policy, prompt, eos, SamplingConfig(max_length=24), drop_every=every)
        is_eos = tokens == eos
        first = torch.where(is_eos.any(1), is_eos.int().argmax(1), tokens.shape[1])
        after_first = torch.arange(tokens.shape[1])[None, :] >= first[:, None]
        assert (tokens[after_first] == eos).all()
        lengths[every], stopped[every] = first.float().mean().item(), is_eos.any(1).float().mean().item()
        assert first.unique().numel() > 5  # rows do finish at different steps here
    assert abs(lengths[1] - lengths[8]) < 1.5 and abs(stopped[1] - stopped[8]) < 0.1, (lengths, stopped)
    greedy = SamplingConfig(max_length=24, top_k=1)
    runs = [_fast_batch(policy, prompt[:8], eos, greedy, drop_every=every)[0] for every in (1, 8)]
    assert torch.equal(runs[0], runs[1])


def test_preallocated_decode_cache_gives_the_same_texts_as_transformers_own(tiny_policy, monkeypatch):
    """The in-place cache must not change a single sampled token (row dropping included)."""
    from transformers import DynamicCache

    import prefalign.engine.decoding as decoding

    policy, tok = tiny_policy
    body = torch.randint(10, policy.config.vocab_size, (64, 4), generator=torch.Generator().manual_seed(1))
    prompt = torch.cat([torch.full((64, 1), tok.bos_token_id), body], 1)  # BOS + a 4-token prompt
    assert type(decoding.decode_cache(policy, 24, preallocate=True).layers[0]).__name__ == "PreallocatedLayer"
    assert type(decoding.decode_cache(policy, 24).layers[0]).__name__ == "DynamicLayer"  # the CPU default
    preallocated = decoding.decode_cache
    runs = []
    for cache_of in (
        lambda model, capacity: preallocated(model, capacity, preallocate=True),
        lambda model, capacity: DynamicCache(config=model.config),
    ):
        monkeypatch.setattr(decoding, "decode_cache", cache_of)
        for every in (1, 4):
            torch.manual_seed(0)
            runs.append(
                decoding._fast_batch(policy, prompt, tok.eos_token_id, SamplingConfig(max_length=24), drop_every=every)[
                    0
                ]
            )
    assert (runs[0] == tok.eos_token_id).any()  # some rows stop early, so rows are dropped mid-way
    assert torch.equal(runs[0], runs[2]) and torch.equal(runs[1], runs[3])


def test_a_padded_lm_head_samples_the_same_texts_and_log_probs(tiny_policy):
    """pad_output_vocabulary (on by default on GPUs): same logits, texts and completion log-probs."""
    import copy

    from prefalign.engine.decoding import completion_logprobs
    from prefalign.models.speedups import pad_output_vocabulary

    policy, tok = tiny_policy
    vocab = policy.config.vocab_size
    multiple = next(m for m in (64, 48, 7, 5) if vocab % m)  # one the tiny vocabulary is not a multiple of
    padded = pad_output_vocabulary(copy.deepcopy(policy), multiple)
    assert padded.get_output_embeddings().weight.shape[0] == -(-vocab // multiple) * multiple > vocab
    ids = torch.randint(0, vocab, (4, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain_logits, padded_logits = policy(input_ids=ids).logits, padded(input_ids=ids).logits
    assert padded_logits.shape == plain_logits.shape
    torch.testing.assert_close(padded_logits, plain_logits)
    assert texts_of(padded, tok, 40, seed=3) == texts_of(policy, tok, 40, seed=3)
    prompt = torch.full((4, 1), tok.bos_token_id)
    for model_logps in zip(
        completion_logprobs(policy, prompt, ids, tok.eos_token_id),
        completion_logprobs(padded, prompt, ids, tok.eos_token_id),
    ):
        torch.testing.assert_close(*model_logps)
    assert pad_output_vocabulary(padded, multiple) is padded  # already aligned: left as it is


def test_tokenizer_threads_turns_parallelism_on_inside_and_restores_it(monkeypatch):
    import os

    from prefalign.engine.scoring import tokenizer_threads

    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # what the CLI sets
    with tokenizer_threads():
        assert os.environ["TOKENIZERS_PARALLELISM"] == "true"
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    monkeypatch.delenv("TOKENIZERS_PARALLELISM")
    with pytest.raises(KeyError), tokenizer_threads():
        raise KeyError("an error inside the block")
    assert "TOKENIZERS_PARALLELISM" not in os.environ


def test_classifier_batches_fill_a_token_budget_on_a_gpu_and_128_rows_on_cpu():
    from prefalign.engine.scoring import GPU_ROWS, GPU_TOKENS, _batch_ends

    lengths = np.sort(np.random.default_rng(0).integers(5, 300, 5000))
    for cuda, batch_size in ((False, None), (True, None), (True, 64)):
        ends = _batch_ends(lengths, batch_size, cuda)
        starts = [0, *ends[:-1]]
        assert ends[-1] == len(lengths) and all(s < e for s, e in zip(starts, ends))  # every text once, in order
        rows = np.diff([0, *ends])
        if not cuda or batch_size:
            assert (rows[:-1] == (batch_size or 128)).all()
        else:  # padded to its longest (last) text, each batch stays within the budget
            assert all((e - s) * lengths[e - 1] <= GPU_TOKENS or e - s == 1 for s, e in zip(starts, ends))
            assert rows.max() <= GPU_ROWS and rows[0] == GPU_ROWS and len(ends) < 5000 / 128
    assert _batch_ends(np.array([40_000, 50_000]), None, True) == [1, 2]  # two do not fit: one each


def test_a_state_space_policy_keeps_finished_rows_and_their_log_probs_stay_exact(tiny_policy):
    """Mamba's cache holds per-row states that cannot drop rows: the fast loop keeps finished rows
    (writing EOS) instead, and the log-probs it sums from decoding match a forward pass (KL to itself 0)."""
    import copy

    from transformers import MambaConfig, MambaForCausalLM

    _, tok = tiny_policy
    torch.manual_seed(0)
    mamba = MambaForCausalLM(
        MambaConfig(
            vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, state_size=8, bos_token_id=tok.bos_token_id
        )
    ).eval()
    # As EOS, a token the random model draws ~10% of the time after BOS: rows end at different steps.
    with torch.no_grad():
        first = mamba(torch.tensor([[tok.bos_token_id]])).logits[0, -1].softmax(-1)
    tok = copy.deepcopy(tok)
    tok.eos_token = tok.convert_ids_to_tokens(int((first - 0.1).abs().argmin()))
    sampling = SamplingConfig(max_length=24, batch_size=32, top_k=0, top_p=1.0)
    chunks = list(generate(mamba, tok, 32, sampling, 0, reference=mamba))
    n_tokens = np.concatenate([c["n_tokens"] for c in chunks])
    assert 0 < (n_tokens < 23).sum() < 32  # some rows finished early, not all: the case that dropped rows
    logp, logp_ref = (np.concatenate([c[k] for c in chunks]) for k in ("logp", "logp_ref"))
    assert np.allclose(logp, logp_ref, atol=1e-4)
    greedy = dict(max_length=24, batch_size=8, top_k=1)
    assert texts_of(mamba, tok, 8, 0, SamplingConfig(engine="fast", **greedy)) == texts_of(
        mamba, tok, 8, 0, SamplingConfig(engine="hf", **greedy)
    )


# A context whose next token is spread over many words (the corpus' adjectives), so that each filter
# below removes mass: top-k 20 binds, top-p 0.5 keeps ~8 of those 20, temperature 0.7 reshapes them.
SPREAD_PREFIX = "The film was very"
FILTERED = {"top_k": 20, "top_p": 0.5, "temperature": 0.7}


def exact_filtered_probs(policy, ids: list[int], top_k: int, top_p: float, temperature: float) -> dict[int, float]:
    """{token: probability} of the next token after `ids` as transformers' warpers define it, written
    out: logits / temperature, the top_k best, then the fewest most likely of those whose mass reaches
    top_p, renormalised."""
    with torch.inference_mode():
        logits = policy(input_ids=torch.tensor([ids])).logits[0, -1].double() / temperature
    best = logits.topk(top_k).indices
    probs = logits[best].softmax(-1)  # sorted, descending
    kept = int((probs.cumsum(0) < top_p).sum()) + 1
    return dict(zip(best[:kept].tolist(), (probs[:kept] / probs[:kept].sum()).tolist()))


def draw_tokens(policy, tok, engine: str, rows: int, new_tokens: int, seed: int) -> torch.Tensor:
    """(rows, new_tokens) tokens after SPREAD_PREFIX from the `fast` engine's decode loop or from
    transformers' `generate` (the `hf` engine), under FILTERED."""
    from prefalign.engine.decoding import _fast_batch, _hf_batch

    ids = [tok.bos_token_id, *tok.encode(SPREAD_PREFIX)]
    sampling = SamplingConfig(max_length=len(ids) + new_tokens, **FILTERED)
    prompt = torch.tensor([ids] * rows)
    torch.manual_seed(seed)
    with torch.inference_mode():
        if engine == "fast":
            return _fast_batch(policy, prompt, tok.eos_token_id, sampling)[0]
        return _hf_batch(policy, prompt, tok.eos_token_id, tok.pad_token_id, sampling)


def chi_square_limit(df: int, z: float = 3.09) -> float:
    """The chi-square value exceeded with probability ~0.001 (z = 3.09) at `df` degrees of freedom
    (Wilson-Hilferty's approximation)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


@pytest.mark.parametrize("engine", ["fast", "hf"])
def test_next_token_frequencies_follow_the_exact_top_k_top_p_temperature_probabilities(tiny_policy, engine):
    """Both engines draw only the tokens the filters keep, as often as the filtered softmax says
    (chi-square at p = 0.001): a filter skipped, or the temperature applied twice or not at all, fails."""
    from collections import Counter

    policy, tok = tiny_policy
    rows = 8000
    expected = exact_filtered_probs(policy, [tok.bos_token_id, *tok.encode(SPREAD_PREFIX)], **FILTERED)
    assert 4 <= len(expected) <= 16  # every filter binds: a spread the frequencies can tell apart
    counts = Counter(draw_tokens(policy, tok, engine, rows, 1, seed=0)[:, 0].tolist())
    assert set(counts) <= set(expected), {tok.decode([t]): n for t, n in counts.items() if t not in expected}
    chi_square = sum((counts[t] - rows * p) ** 2 / (rows * p) for t, p in expected.items())
    assert chi_square < chi_square_limit(len(expected) - 1), (chi_square, counts, expected)


def test_fast_engine_and_generate_draw_the_same_two_token_continuations(tiny_policy):
    """The second token comes from the KV cache's step: the joint frequencies of (first, second) of
    each engine are within 0.05 (total variation) of the exact filtered probabilities and of each other."""
    from collections import Counter

    policy, tok = tiny_policy
    rows = 8000
    ids = [tok.bos_token_id, *tok.encode(SPREAD_PREFIX)]
    exact = {
        (first, second): p * q
        for first, p in exact_filtered_probs(policy, ids, **FILTERED).items()
        for second, q in exact_filtered_probs(policy, [*ids, first], **FILTERED).items()
    }
    shares = {}
    for engine in ("fast", "hf"):
        counts = Counter(map(tuple, draw_tokens(policy, tok, engine, rows, 2, seed=1).tolist()))
        shares[engine] = {pair: n / rows for pair, n in counts.items()}

    def distance(a: dict, b: dict) -> float:
        return 0.5 * sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b))

    assert distance(shares["fast"], exact) < 0.05 and distance(shares["hf"], exact) < 0.05, (
        distance(shares["fast"], exact),
        distance(shares["hf"], exact),
    )
    assert distance(shares["fast"], shares["hf"]) < 0.05
