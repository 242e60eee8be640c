"""Sample texts from the policy and score them: the `sample` stage, and the engine `evaluate` reuses.

Every text is generated unconditionally from the policy's BOS token (`max_length` tokens including
BOS, top-k / top-p sampling, KV cache on), decoded with special tokens skipped, then scored by the
classifier (see scoring.py). Batch b is generated under seed `hash(seed, b)`, so a config gives the
same texts every time. Results are streamed to Parquet in chunks (flat memory in N), into a
temporary file that is renamed when complete. Run alone with:

    prefalign sample CONFIG
"""

from __future__ import annotations

import inspect
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from prefalign.scoring import score_texts


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


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(candidate ids, their logits) after top-k then top-p filtering, like HF's warpers in that order.

    Taking the k best first means the nucleus is computed over k candidates instead of sorting the
    whole vocabulary, which is most of the per-step cost for a 50k vocabulary on CPU.
    """
    if top_k and top_k < logits.shape[-1]:
        values, ids = logits.topk(top_k, dim=-1)  # sorted, descending
    else:
        values, ids = logits.sort(dim=-1, descending=True)
    if top_p < 1.0:
        probs = values.softmax(-1)
        # Drop a candidate when the mass strictly before it already reaches top_p (the best always stays).
        drop = (probs.cumsum(-1) - probs) >= top_p
        drop[:, 0] = False
        values = values.masked_fill(drop, float("-inf"))
    return ids, values


def _fast_batch(model, size: int, bos: int, eos: int, sampling, device) -> torch.Tensor:
    """Sample `size` sequences from BOS with the KV cache, dropping rows from the batch as they hit EOS."""
    from transformers import DynamicCache

    steps = sampling.max_length - 1
    tokens = torch.full((size, steps), eos, dtype=torch.long, device=device)
    alive = torch.arange(size, device=device)
    cache = DynamicCache(config=model.config)
    step_input = torch.full((size, 1), bos, dtype=torch.long, device=device)
    # transformers 5 renamed `past_key_values` to `cache`; accept models on either side of the rename.
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    for t in range(steps):
        logits = model(input_ids=step_input, use_cache=True, **{cache_arg: cache}).logits[:, -1, :].float()
        ids, values = filter_top_k_top_p(logits / sampling.temperature, sampling.top_k, sampling.top_p)
        choice = torch.multinomial(values.softmax(-1), 1)
        nxt = ids.gather(1, choice).squeeze(1)
        tokens[alive, t] = nxt
        running = nxt != eos
        if not bool(running.all()):
            # Finished rows leave the batch: later steps only pay for sequences still being written.
            keep = running.nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            alive, nxt = alive[keep], nxt[keep]
            cache.batch_select_indices(keep)
        step_input = nxt[:, None]
    return tokens


def _hf_batch(model, size: int, bos: int, eos: int, pad: int, sampling, device) -> torch.Tensor:
    prompt = torch.full((size, 1), bos, dtype=torch.long, device=device)
    out = model.generate(
        input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=True, max_length=sampling.max_length,
        top_k=sampling.top_k, top_p=sampling.top_p, temperature=sampling.temperature, pad_token_id=pad,
        eos_token_id=eos,
    )  # fmt: skip
    return out[:, 1:]


@torch.inference_mode()
def generate(model, tokenizer, n: int, sampling, seed: int, batch_size: int | None = None, desc: str = "sample"):
    """Yield (texts, n_tokens) chunks, n texts in all, each started from a lone BOS token."""
    device = next(model.parameters()).device
    batch_size = batch_size or sampling.batch_size or auto_batch_size(model, sampling.max_length, device)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    with tqdm(total=n, desc=desc, unit="text", leave=False, disable=None) as bar:
        for b, start in enumerate(range(0, n, batch_size)):
            size = min(batch_size, n - start)
            torch.manual_seed(_batch_seed(seed, b))
            # All sequences start from the same single BOS: no prompt padding, no attention mask needed.
            if sampling.engine == "fast":
                gen = _fast_batch(model, size, bos, eos, sampling, device).cpu()
            else:
                gen = _hf_batch(model, size, bos, eos, tokenizer.pad_token_id, sampling, device).cpu()
            # Length = tokens before the first EOS (sequences that never stop count every token).
            is_eos = gen == eos
            n_tokens = torch.where(is_eos.any(1), is_eos.int().argmax(1), gen.shape[1]).numpy()
            texts = tokenizer.batch_decode(gen, skip_special_tokens=True)
            bar.update(size)
            yield texts, n_tokens


def sample_and_score(policy, ptok, clf, ctok, positive: int, n: int, sampling, seed: int, reward_batch: int | None,
                     out_path: Path, desc: str = "sample") -> pd.DataFrame:  # fmt: skip
    """Generate and score n texts, streaming them to `out_path` (Parquet) atomically."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    schema = pa.schema([("text", pa.string()), ("reward", pa.float32()), ("positive_prob", pa.float32()),
                        ("is_positive", pa.bool_()), ("n_tokens", pa.int32())])  # fmt: skip
    t0 = time.time()
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for texts, n_tokens in generate(policy, ptok, n, sampling, seed, desc=desc):
                scores = score_texts(texts, clf, ctok, positive, reward_batch or 128)
                table = pa.table({"text": texts, **scores, "n_tokens": n_tokens.astype(np.int32)}, schema=schema)
                writer.write_table(table)
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    df = pd.read_parquet(out_path)
    df.attrs["seconds"] = time.time() - t0
    return df
