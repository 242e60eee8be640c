"""The compiled decode step (`sampling.compile_step`) and the log-probs decoding returns for the KL.

On CPU `graphs` runs as `fused` (torch.compile's C++ kernels, no CUDA graphs): the same code path
minus the recording, so these tests check what the GPU runs up to the graph replay.
"""

import warnings

import numpy as np
import pytest
import torch

from prefalign.config.schema import SamplingConfig
from prefalign.engine import decode_step, decoding
from prefalign.engine.decode_step import compiled_step
from prefalign.engine.decoding import _fast_batch, _static_batch, completion_logprobs, generate

SAMPLING = SamplingConfig(max_length=24)


def prompt_of(tok, rows: int, body: int = 3) -> torch.Tensor:
    ids = torch.randint(10, 200, (rows, body), generator=torch.Generator().manual_seed(1))
    return torch.cat([torch.full((rows, 1), tok.bos_token_id), ids], 1)


def test_compiled_steps_sample_the_tokens_and_log_probs_of_the_eager_loop(tiny_policy):
    """Same seed, same tokens as the eager loop that keeps every row; log-probs equal to 1e-4; the
    static cache reused for a second batch (reset, not rebuilt) gives the same again."""
    from transformers import StaticCache

    policy, tok = tiny_policy
    eos, prompt = tok.eos_token_id, prompt_of(tok, 48)
    with torch.inference_mode():
        torch.manual_seed(0)
        eager_tokens, eager_logp = _fast_batch(policy, prompt, eos, SAMPLING, drop_every=10**9, with_logp=True)
        cache = StaticCache(config=policy.config, max_cache_len=SAMPLING.max_length)
        for _ in range(2):
            torch.manual_seed(0)
            tokens, logp = _static_batch(policy, prompt, eos, SAMPLING, compiled_step("fused"), cache, with_logp=True)
            assert torch.equal(tokens, eager_tokens)
            torch.testing.assert_close(logp, eager_logp, rtol=1e-4, atol=1e-4)
    assert (eager_tokens == eos).any(1).float().mean() > 0.2  # rows do finish early: EOS handling is exercised


def test_log_probs_from_decoding_equal_a_forward_pass_over_the_completion(tiny_policy):
    """What generate stores as `logp` (decoding's own, rows dropped as they finish) is what
    completion_logprobs computes with a forward pass, up to and including the first EOS."""
    policy, tok = tiny_policy
    eos, prompt = tok.eos_token_id, prompt_of(tok, 64)
    with torch.inference_mode():
        torch.manual_seed(3)
        tokens, logp = _fast_batch(policy, prompt, eos, SAMPLING, drop_every=1, with_logp=True)
        forward_logp, scored = completion_logprobs(policy, prompt, tokens, eos)
    assert (tokens == eos).any(1).any() and not (tokens == eos).any(1).all()  # rows of both kinds
    torch.testing.assert_close(logp, forward_logp, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("compile_step", ["eager", "fused"])
def test_generate_with_the_policy_as_its_own_reference_estimates_zero_kl(tiny_policy, compile_step):
    """Decoding's log-probs (logp) against the reference's forward pass (logp_ref) over batches of
    two sizes, the last padded to 8 rows when compiled: the same model on both sides gives the same
    numbers, and n_scored counts the EOS."""
    policy, tok = tiny_policy
    sampling = SamplingConfig(max_length=24, batch_size=16, compile_step=compile_step)
    chunks = list(generate(policy, tok, 37, sampling, 5, reference=policy))  # batches of 16, 16 and 5 (run as 8)
    logp, logp_ref = (np.concatenate([c[k] for c in chunks]) for k in ("logp", "logp_ref"))
    n_tokens, n_scored = (np.concatenate([c[k] for c in chunks]) for k in ("n_tokens", "n_scored"))
    assert len(logp) == 37 and (logp < 0).all()
    np.testing.assert_allclose(logp, logp_ref, rtol=1e-4, atol=1e-4)
    assert ((n_scored == n_tokens + 1) | (n_scored == n_tokens)).all() and (n_scored == n_tokens + 1).any()


def test_a_decode_step_that_fails_to_compile_falls_back_to_the_eager_loop(tiny_policy, monkeypatch):
    policy, tok = tiny_policy
    eager = list(generate(policy, tok, 20, SamplingConfig(max_length=24, batch_size=8), 2))

    def broken(mode):
        def step(*args):
            raise RuntimeError("no compiler here")

        return step

    monkeypatch.setattr(decoding, "compiled_step", broken)
    monkeypatch.setattr(decode_step, "_FAILED", set())  # this test's failure stays out of the others'
    assert decoding.decode_step_mode(SamplingConfig(compile_step="fused"), policy) == "fused"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fallback = list(generate(policy, tok, 20, SamplingConfig(max_length=24, batch_size=8, compile_step="fused"), 2))
    assert sum("compile_step: eager" in str(w.message) for w in caught) == 1  # said once, not per batch
    assert [t for c in fallback for t in c["text"]] == [t for c in eager for t in c["text"]]
    # The failure is remembered: later sampling in this process does not try to compile again.
    assert decoding.decode_step_mode(SamplingConfig(compile_step="fused"), policy) == "eager"


def test_compile_step_resolves_per_device_and_model(tiny_policy):
    policy, _ = tiny_policy
    on_cpu = {
        mode: decoding.decode_step_mode(SamplingConfig(compile_step=mode), policy)
        for mode in ("auto", "eager", "fused", "graphs")
    }
    assert on_cpu == {"auto": "eager", "eager": "eager", "fused": "fused", "graphs": "fused"}

    class NotCompilable(torch.nn.Module):  # a model transformers does not mark as compilable
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

    assert decoding.decode_step_mode(SamplingConfig(compile_step="fused"), NotCompilable()) == "eager"

    class OldCacheArgument(NotCompilable):  # marked compilable, but its forward would ignore `cache=`
        _can_compile_fullgraph = True

        def forward(self, input_ids, past_key_values=None, **kwargs):
            raise AssertionError("not called")

    assert decoding.decode_step_mode(SamplingConfig(compile_step="fused"), OldCacheArgument()) == "eager"


def test_compiled_batches_come_in_a_few_sizes():
    from prefalign.engine.decoding import _compiled_rows

    assert [_compiled_rows(r, 2048) for r in (2048, 1808, 1024, 904, 100, 3)] == [2048, 2048, 1024, 1024, 128, 8]
    assert [_compiled_rows(r, 16) for r in (16, 9, 8, 5, 1)] == [16, 16, 8, 8, 8]
    assert _compiled_rows(3, 4) == 4  # a batch size under 8 is its own only size


def test_a_second_model_of_the_architecture_reuses_the_compiled_step(tiny_policy):
    """Parameters and cache are graph inputs: evaluating another model compiles nothing new."""
    import copy

    from torch._dynamo.utils import counters

    policy, tok = tiny_policy
    sampling = SamplingConfig(max_length=24, batch_size=16, compile_step="fused")
    assert decoding.decode_step_mode(sampling, policy) == "fused"
    first = [t for c in generate(policy, tok, 16, sampling, 0) for t in c["text"]]
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0
    cache = decode_step.static_cache(policy, 16, 24)
    assert [t for c in generate(policy, tok, 16, sampling, 0) for t in c["text"]] == first  # a second run, same seed
    assert decode_step.static_cache(policy, 16, 24) is cache  # the model's cache, kept across generate calls
    other = copy.deepcopy(policy)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.5)  # other weights, same shapes
    second = [t for c in generate(other, tok, 16, sampling, 0) for t in c["text"]]
    assert counters["stats"]["unique_graphs"] == graphs
    assert second != first  # the new weights were used, not the first model's


def test_new_batch_sizes_stop_compiling_after_the_second(tiny_policy):
    """The second batch size compiles the step with the size symbolic; later sizes reuse that graph."""
    from torch._dynamo.utils import counters

    policy, tok = tiny_policy
    before = counters["stats"]["unique_graphs"]
    for rows in (40, 20, 10, 72):  # sizes no other test uses: each its own static cache
        sampling = SamplingConfig(max_length=12, batch_size=rows, compile_step="fused")
        assert len([t for c in generate(policy, tok, rows, sampling, 1) for t in c["text"]]) == rows
    assert counters["stats"]["unique_graphs"] - before <= 2
