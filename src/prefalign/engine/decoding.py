"""Sample texts from the policy: the decoding behind the `sample` stage and every evaluation run.

Every text is generated from the policy's BOS token, or from BOS + a corpus prompt (prompts.py),
with top-k / top-p sampling and the KV cache on, at most `max_length` tokens in all (BOS and
prompt included); the completion is decoded with special tokens skipped and the classifier scores
prompt + completion (scoring.py). Rows of one batch share a prompt length, so no batch is ever
padded. Batch b is generated under seed `hash(seed, b)`, so a config gives the same texts every
time. Given a reference model, the log-probability of each completion (its tokens up to and
including the first EOS) under the policy and the reference is also stored, from the models' full
softmax (temperature 1, no top-k / top-p): the policy's from the decode steps' own logits (the
`fast` engine) or a forward pass (`hf`), the reference's from a forward pass; metrics.kl_estimate
turns them into a KL estimate. The `fast` engine's decode step runs eagerly or compiled
(`sampling.compile_step`, decode_step.py). Results are streamed to Parquet in chunks (flat memory
in N) by sample_file.py, into a temporary file that is renamed when complete. Run alone with:

    prefalign sample CONFIG
"""

from __future__ import annotations

import inspect
import time
import warnings

import numpy as np
import torch
from tqdm.auto import tqdm

from prefalign.engine.decode_step import (
    compile_failed,
    compiled_step,
    decode_cache,
    decode_step_mode,
    last_logits,
    static_cache,
    token_logp,
)
from prefalign.engine.scoring import tokenizer_threads

# On a GPU, finished rows leave the decode batch every this many steps (one host sync each time).
_DROP_EVERY = 8

# On CPU, completion_logprobs' slices hold at least this many tokens (rows x width).
MIN_SLICE_TOKENS = 256


def auto_batch_size(model, max_length: int, device: torch.device) -> int:
    """Sequences per generate() call: bounded by memory for the KV cache and logits."""
    cfg = model.config
    layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", 12)
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", 768)
    bytes_per = 2 if model.dtype in (torch.float16, torch.bfloat16) else 4
    per_seq = (2 * layers * hidden * max_length + 4 * cfg.vocab_size) * bytes_per
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(max(8, min(2048, 0.3 * free / per_seq)))
    # On CPU throughput stops growing past a few hundred sequences; memory is rarely the limit.
    import psutil

    return int(max(8, min(256, 0.1 * psutil.virtual_memory().available / per_seq)))


def _batch_seed(seed: int, batch: int) -> int:
    return (seed * 1_000_003 + batch * 7919) % (2**63 - 1)


def filter_top_k_top_p(
    logits: torch.Tensor, top_k: int, top_p: float, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(candidate ids, their fp32 logits / temperature) after top-k then top-p filtering, like HF's
    warpers (temperature, top-k, top-p) in that order.

    Taking the k best first means the nucleus is computed over k candidates instead of sorting the
    whole vocabulary, which is most of the per-step cost for a 50k vocabulary on CPU, and only the
    k survivors are converted to fp32.
    """
    if top_k and top_k < logits.shape[-1]:
        values, ids = logits.topk(top_k, dim=-1)  # sorted, descending
    else:
        values, ids = logits.sort(dim=-1, descending=True)
    values = values.float() / temperature
    if top_p < 1.0:
        probs = values.softmax(-1)
        # Drop a candidate when the mass strictly before it already reaches top_p (the best always stays).
        drop = (probs.cumsum(-1) - probs) >= top_p
        drop[:, 0] = False
        values = values.masked_fill(drop, float("-inf"))
    return ids, values


def _draw(logits: torch.Tensor, sampling, finished: torch.Tensor, eos: int) -> torch.Tensor:
    """(rows,) the next token of each row, drawn from `logits` (rows, vocab) under the sampling
    filters; EOS for rows that have finished. Top-k runs in the model's dtype, then fp32 for the k
    survivors only (dividing by a positive temperature keeps the order, so it can wait until after)."""
    ids, values = filter_top_k_top_p(logits, sampling.top_k, sampling.top_p, sampling.temperature)
    choice = torch.multinomial(values.softmax(-1), 1)
    return ids.gather(1, choice).squeeze(1).masked_fill(finished, eos)


def _fast_batch(
    model, prompt: torch.Tensor, eos: int, sampling, drop_every: int | None = None, with_logp: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(tokens (rows, max_length - prompt length), their log-prob sums or None): each row of `prompt`
    (equal lengths) continued with the KV cache, rows dropped as they hit EOS.

    Rows that have written EOS are dropped from the batch (where the cache's layers can drop rows), so
    later steps only pay for sequences still being written. Finding them is a host sync, which on a GPU stalls the queue of kernels: there
    they are dropped every `drop_every` steps (default: 1 on CPU, `_DROP_EVERY` elsewhere), and in
    between a finished row keeps writing EOS. `with_logp`: also each completion's log-probability
    under the model's full distribution (token_logp), summed up to and including its first EOS.
    """
    size, device = prompt.shape[0], prompt.device
    steps = sampling.max_length - prompt.shape[1]
    drop_every = drop_every or (1 if device.type == "cpu" else _DROP_EVERY)
    tokens = torch.full((size, steps), eos, dtype=torch.long, device=device)
    alive = torch.arange(size, device=device)  # batch row -> row of `tokens`
    finished = torch.zeros(size, dtype=torch.bool, device=device)  # per batch row: EOS written
    logp = torch.zeros(size, device=device) if with_logp else None  # per row of `tokens`
    cache = decode_cache(model, sampling.max_length)
    # State-space and linear-attention layers (Mamba, ...) cannot drop rows: there finished rows stay
    # and write EOS until every row has finished, as in the compiled step.
    rows_leave = all(hasattr(layer, "batch_select_indices") for layer in getattr(cache, "layers", [cache]))
    step_input = prompt
    parameters = inspect.signature(model.forward).parameters
    # transformers 5 renamed `past_key_values` to `cache`; accept models on either side of the rename.
    cache_arg = "cache" if "cache" in parameters else "past_key_values"
    # Only the last position's logits are needed: the LM head then skips the prompt's positions.
    last_only = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
    for t in range(steps):
        logits = model(input_ids=step_input, use_cache=True, **{cache_arg: cache}, **last_only).logits[:, -1, :]
        nxt = _draw(logits, sampling, finished, eos)
        tokens[alive, t] = nxt
        if logp is not None:
            logp[alive] += token_logp(logits, nxt).masked_fill(finished, 0.0)
        finished |= nxt == eos
        if (t + 1) % drop_every == 0:
            keep = (~finished).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            if keep.numel() < len(alive) and rows_leave:
                alive, nxt, finished = alive[keep], nxt[keep], finished[keep]
                cache.batch_select_indices(keep)
        step_input = nxt[:, None]
    return tokens, logp


def _static_batch(
    model, prompt: torch.Tensor, eos: int, sampling, step, cache, with_logp: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """_fast_batch's result for the compiled decode step `step` (a last_logits) with a StaticCache:
    every shape is fixed, so no row ever leaves the batch (a finished row keeps writing EOS) and the
    loop stops once all rows have finished, checked every _DROP_EVERY steps. The prompt runs eagerly
    (its length varies); the steps after it through `step`. Under one seed it samples the same
    tokens as _fast_batch that never drops a row, up to the compiled kernels' rounding."""
    size, device = prompt.shape[0], prompt.device
    steps = sampling.max_length - prompt.shape[1]
    tokens = torch.full((size, steps), eos, dtype=torch.long, device=device)
    finished = torch.zeros(size, dtype=torch.bool, device=device)
    logp = torch.zeros(size, device=device) if with_logp else None
    cache.reset()
    logits, lse = last_logits(model, prompt, cache)
    for t in range(steps):
        nxt = _draw(logits, sampling, finished, eos)
        tokens[:, t] = nxt
        if logp is not None:
            logp += token_logp(logits, nxt, lse).masked_fill(finished, 0.0)
        finished |= nxt == eos
        if t + 1 == steps or ((t + 1) % _DROP_EVERY == 0 and bool(finished.all())):
            break
        # With CUDA graphs the outputs are overwritten by the next replay: everything above that reads
        # `logits` and `lse` has been queued by now, so the step's buffers are free to reuse.
        torch.compiler.cudagraph_mark_step_begin()
        logits, lse = step(model, nxt[:, None], cache)
    return tokens, logp


def _hf_batch(model, prompt: torch.Tensor, eos: int, pad: int, sampling) -> torch.Tensor:
    out = model.generate(
        input_ids=prompt,
        attention_mask=torch.ones_like(prompt),
        do_sample=True,
        max_length=sampling.max_length,
        top_k=sampling.top_k,
        top_p=sampling.top_p,
        temperature=sampling.temperature,
        pad_token_id=pad,
        eos_token_id=eos,
    )
    return out[:, prompt.shape[1] :]


@torch.inference_mode()
def completion_logprobs(
    model, prompt: torch.Tensor, completion: torch.Tensor, eos: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the sum over the completion's tokens (up to and including its first EOS) of
    log p(token | prefix), and how many tokens that is.

    The model's full distribution: log-softmax of its logits, no temperature, top-k or top-p. Rows
    are scored in slices whose logits stay small (~64 MB on CPU, where memory is the laptop's; a
    fifth of the free memory on a GPU, where larger slices keep it busy); log p is the target's
    logit minus the logsumexp.
    """
    ids = torch.cat([prompt, completion], 1)
    p, steps = prompt.shape[1], completion.shape[1]
    is_eos = completion == eos
    first = torch.where(is_eos.any(1), is_eos.int().argmax(1), steps)
    scored = torch.arange(steps, device=ids.device)[None, :] <= first[:, None]
    if ids.device.type == "cuda":
        # A fifth of the free memory for the model's logits and their fp32 copy (2 + 4 bytes each
        # in bf16): the larger the slice, the fewer small forward passes.
        budget, max_rows = 0.2 * torch.cuda.mem_get_info(ids.device)[0] / 6, 1024
    else:
        # ~16 MB of logits per slice, which stays in cache (a 0.94M-parameter policy with a 4k vocabulary
        # scores 1,000 texts ~25% faster than with 64 MB slices), but at least MIN_SLICE_TOKENS tokens a
        # slice, so a 50k-vocabulary model still runs matrix products of a useful size.
        budget, max_rows = 4e6, 256
    # Rows sorted by length and each slice cut after its longest completion: most texts stop far
    # before max_length, and the tokens after EOS would only cost vocabulary-wide logits.
    first_cpu = first.cpu()  # one copy: the slice widths below are read on the host
    order_cpu = torch.argsort(first_cpu)
    order = order_cpu.to(ids.device)
    total = torch.zeros(ids.shape[0], device=ids.device)
    i = 0
    while i < len(order):
        width = min(steps, int(first_cpu[order_cpu[min(i + max_rows - 1, len(order) - 1)]]) + 1)  # at most the longest
        rows = int(budget // ((p + width) * model.config.vocab_size))
        if ids.device.type != "cuda":
            rows = max(rows, -(-MIN_SLICE_TOKENS // (p + width)))
        rows = max(1, min(max_rows, rows))
        idx = order[i : i + rows]
        width = min(steps, int(first_cpu[order_cpu[i : i + rows]].max()) + 1)
        logits = model(input_ids=ids[idx, : p + width - 1]).logits[:, p - 1 :].float()
        target = completion[idx, :width, None]
        lp = logits.gather(-1, target).squeeze(-1) - torch.logsumexp(logits, -1)
        total[idx] = (lp * scored[idx, :width]).sum(1)
        i += rows
    return total, scored.sum(1)


def _compiled_rows(rows: int, batch_size: int) -> int:
    """The rows a compiled decode step runs for a batch of `rows`: the smallest of batch_size,
    batch_size / 2, batch_size / 4, ... (at least 8) that holds them. Each size is a CUDA graph (and
    a static cache) of its own, and the first two sizes each cost a compilation (compiled_step);
    these few sizes serve every batch (5,000 texts in batches of 2,048: 2,048 and 1,024 for the
    last 904)."""
    size = batch_size
    while size // 2 >= max(rows, 8):
        size //= 2
    return max(size, rows)


def _batches(prompt_lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices in batches of at most `batch_size` rows that share a prompt length (no padding)."""
    order = np.argsort(prompt_lengths, kind="stable")
    cuts = np.flatnonzero(np.diff(prompt_lengths[order])) + 1
    return [g[i : i + batch_size] for g in np.split(order, cuts) for i in range(0, len(g), batch_size)]


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    n: int,
    sampling,
    seed: int,
    batch_size: int | None = None,
    desc: str = "sample",
    prompts: list[list[int]] | None = None,
    reference=None,
):
    """Yield chunks of n samples in all: dicts of row `index`, `text`, `n_tokens` (+ `logp`, `logp_ref`,
    `n_scored`), and `seconds`: the chunk's wall time by phase (`decode`, `texts`, + `kl`).

    `prompts`: token ids to start row i from (without BOS; one entry per row); None: BOS alone.
    `reference`: a model to compare with; then each completion's log-prob under the policy and the
    reference is returned too.
    """
    device = next(model.parameters()).device
    batch_size = batch_size or sampling.batch_size or auto_batch_size(model, sampling.max_length, device)
    bos = tokenizer.bos_token_id
    lengths = np.array([len(p) for p in prompts]) if prompts is not None else np.zeros(n, dtype=np.int64)
    if len(lengths) != n:
        raise ValueError(f"{len(lengths)} prompts for {n} samples")
    if n and lengths.max() + 1 >= sampling.max_length:
        raise ValueError(f"a prompt of {lengths.max()} tokens leaves no room under max_length={sampling.max_length}")
    decoder = _BatchDecoder(model, tokenizer, sampling, batch_size, with_logp=reference is not None)
    with tqdm(total=n, desc=desc, unit="text", leave=False, disable=None) as bar:
        for b, rows in enumerate(_batches(lengths, batch_size)):
            started = time.perf_counter()
            # Rows of a batch share the prompt length: no padding, no attention mask needed.
            body = [prompts[i] for i in rows] if prompts is not None else [[] for _ in rows]
            prompt = torch.tensor([[bos, *p] for p in body], dtype=torch.long, device=device)
            gen, logp = decoder.decode(prompt, _batch_seed(seed, b))
            chunk = _chunk(model, tokenizer, rows, prompt, gen, logp, reference, started)
            bar.update(len(rows))
            yield chunk


class _BatchDecoder:
    """Decodes one batch of prompts with the configured engine: the fast loop, eager or compiled
    (a compiler failure turns this batch and every later one eager), or transformers' `generate`."""

    def __init__(self, model, tokenizer, sampling, batch_size: int, with_logp: bool):
        self.model, self.sampling, self.batch_size, self.with_logp = model, sampling, batch_size, with_logp
        self.eos, self.pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        self.mode = decode_step_mode(sampling, model) if sampling.engine == "fast" else "eager"

    def decode(self, prompt: torch.Tensor, batch_seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(generated ids [rows, new tokens], their log-probs [rows] or None) under `batch_seed`."""
        torch.manual_seed(batch_seed)
        if self.mode != "eager":
            try:
                return self._compiled(prompt)
            except Exception as error:  # any compiler failure: this batch and every later one decode eagerly
                first_line = (str(error).splitlines() or [""])[0][:300]
                warnings.warn(
                    f"compiling the decode step failed ({type(error).__name__}: {first_line}); sampling "
                    "goes on without compilation, as with sampling.compile_step: eager",
                    stacklevel=3,
                )
                compile_failed(self.mode)
                self.mode = "eager"
                torch.manual_seed(batch_seed)
        if self.sampling.engine == "fast":
            return _fast_batch(self.model, prompt, self.eos, self.sampling, with_logp=self.with_logp)
        return _hf_batch(self.model, prompt, self.eos, self.pad, self.sampling), None

    def _compiled(self, prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        rows = len(prompt)
        size = _compiled_rows(rows, self.batch_size)
        padded = torch.cat([prompt, prompt[:1].expand(size - rows, -1)])  # extra rows: dropped
        cache = static_cache(self.model, size, self.sampling.max_length)
        step = compiled_step(self.mode)
        gen, logp = _static_batch(self.model, padded, self.eos, self.sampling, step, cache, with_logp=self.with_logp)
        return gen[:rows], logp[:rows] if logp is not None else None


def _chunk(model, tokenizer, rows, prompt, gen, logp, reference, started: float) -> dict:
    """One batch's output rows (see generate), with the host's wall time of each phase."""
    eos = tokenizer.eos_token_id
    # Length = tokens before the first EOS (sequences that never stop count every token).
    is_eos = gen == eos
    stopped = is_eos.any(1)
    n_tokens = torch.where(stopped, is_eos.int().argmax(1), gen.shape[1])
    gen_cpu = gen.cpu()  # waits for the decoding: the phases' seconds below are the host's wall clock
    decoded = time.perf_counter()
    with tokenizer_threads():
        texts = tokenizer.batch_decode(gen_cpu, skip_special_tokens=True)
    chunk = {"index": rows, "text": texts, "n_tokens": n_tokens.cpu().numpy()}
    seconds = {"decode": decoded - started, "texts": time.perf_counter() - decoded}
    if reference is not None:
        kl_start = time.perf_counter()
        # The policy's log-probs come from decoding itself (the fast engine) or a forward pass (hf).
        logp = logp if logp is not None else completion_logprobs(model, prompt, gen, eos)[0]
        chunk["logp"], chunk["n_scored"] = logp.cpu().numpy(), (n_tokens + stopped.long()).cpu().numpy()
        chunk["logp_ref"] = completion_logprobs(reference, prompt, gen, eos)[0].cpu().numpy()
        seconds["kl"] = time.perf_counter() - kl_start
    chunk["seconds"] = seconds
    return chunk
