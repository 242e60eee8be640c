"""Prompts from a corpus, per-completion log-probs and the KL columns of the sampler."""

import numpy as np
import pytest
import torch

from prefalign.config.schema import PromptConfig, SamplingConfig
from prefalign.engine.decoding import completion_logprobs, generate
from prefalign.engine.prompts import corpus_prompts, cut_prompts
from prefalign.engine.sample_file import sample_and_score

SAMPLING = SamplingConfig(max_length=20, batch_size=32)


def test_cut_prompts_repeats_each_prompt_k_times_with_lengths_in_range():
    corpus = [list(range(100 + i, 120 + i)) for i in range(10)] + [[1]]  # the last text is too short
    rows = cut_prompts(corpus, n=22, per_prompt=4, min_tokens=2, max_tokens=5, seed=0)
    assert len(rows) == 22
    groups = [rows[i : i + 4] for i in range(0, 22, 4)]
    assert all(all(r == g[0] for r in g) for g in groups)  # consecutive copies of one prompt
    assert len({tuple(g[0]) for g in groups}) == 6  # 6 prompts, each from a different text
    assert all(2 <= len(r) <= 5 and r != [1] for r in rows)
    assert all(r == corpus[r[0] - 100][: len(r)] for r in rows)  # a prefix of a corpus text
    assert rows == cut_prompts(corpus, 22, 4, 2, 5, seed=0)
    with pytest.raises(ValueError, match="no corpus text"):
        cut_prompts([[1]], 4, 2, 2, 3, seed=0)


def test_cut_prompts_cycles_a_small_corpus():
    rows = cut_prompts([[1, 2, 3], [4, 5, 6]], n=10, per_prompt=1, min_tokens=3, max_tokens=3, seed=1)
    assert sorted(map(tuple, rows)).count((1, 2, 3)) == 5


def test_completion_logprobs_match_a_plain_forward(tiny_policy):
    policy, tok = tiny_policy
    eos = tok.eos_token_id
    prompt = torch.tensor([[tok.bos_token_id, 11, 12], [tok.bos_token_id, 13, 14]])
    completion = torch.tensor([[20, 21, eos, 30], [22, 23, 24, 25]])  # row 0 stops at its EOS
    got, scored = completion_logprobs(policy, prompt, completion, eos)
    assert scored.tolist() == [3, 4]
    with torch.no_grad():
        for row in range(2):
            ids = torch.cat([prompt[row], completion[row]])[None]
            lp = policy(ids).logits.log_softmax(-1)[0]
            expect = sum(lp[2 + t, completion[row, t]] for t in range(int(scored[row])))
            assert float(got[row]) == pytest.approx(float(expect), abs=1e-4)


def test_generate_continues_prompts_and_keeps_row_identity(tiny_policy):
    policy, tok = tiny_policy
    prompts = [[30, 31], [40, 41, 42], [30, 31], [40, 41, 42], [50, 51]]
    chunks = list(generate(policy, tok, 5, SAMPLING, 0, prompts=prompts))
    index = np.concatenate([c["index"] for c in chunks])
    assert sorted(index.tolist()) == [0, 1, 2, 3, 4]
    for c in chunks:  # one prompt length per batch, so nothing is padded
        assert len({len(prompts[i]) for i in c["index"]}) == 1
        # at most max_length tokens in all: BOS + prompt + completion
        assert all(n <= SAMPLING.max_length - 1 - len(prompts[i]) for i, n in zip(c["index"], c["n_tokens"]))
    with pytest.raises(ValueError, match="no room"):
        list(generate(policy, tok, 1, SAMPLING, 0, prompts=[list(range(30, 49))]))


def test_sample_and_score_with_prompts_and_a_reference(tiny_policy, tiny_classifier, tmp_path):
    import copy

    policy, tok = tiny_policy
    clf, ctok = tiny_classifier
    cfg = PromptConfig(corpus="unused", min_tokens=2, max_tokens=4, per_prompt=3)
    corpus = tok(
        ["the film was good and fun", "a dull and slow story", "great acting all round"], add_special_tokens=False
    )["input_ids"]
    ids = cut_prompts(corpus, 12, cfg.per_prompt, cfg.min_tokens, cfg.max_tokens, seed=0)
    prompts = [(p, tok.decode(p)) for p in ids]
    df = sample_and_score(
        policy,
        tok,
        clf,
        ctok,
        1,
        12,
        SAMPLING,
        0,
        None,
        tmp_path / "s.parquet",
        prompts=prompts,
        reference=copy.deepcopy(policy),
    )
    assert set(df.prompt) <= {p[1] for p in prompts} and len(df) == 12
    assert df.groupby("prompt").size().min() >= 3  # k samples per prompt
    # policy == reference: every log-ratio is zero, so the KL estimate is exactly 0
    assert np.allclose(df.logp, df.logp_ref) and (df.logp < 0).all()
    assert (df.n_scored >= df.n_tokens).all() and (df.n_scored <= df.n_tokens + 1).all()
    assert list(df.attrs["phase_seconds"]) == ["decode", "texts", "kl", "score", "write"]
    assert df.attrs["phase_seconds"]["decode"] > 0


def test_corpus_prompts_from_a_csv_file(tiny_policy, tmp_path):
    _, tok = tiny_policy
    path = tmp_path / "reviews.csv"
    path.write_text("text,label\n" + "".join(f"a fine film number {i} indeed,1\n" for i in range(5)))
    cfg = PromptConfig(corpus=str(path), min_tokens=2, max_tokens=3, per_prompt=2)
    rows = corpus_prompts(cfg, tok, 6, seed=0)
    assert len(rows) == 6 and rows[0] == rows[1]
    assert all(text == tok.decode(ids) and 2 <= len(ids) <= 3 for ids, text in rows)
