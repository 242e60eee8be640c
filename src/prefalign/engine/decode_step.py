"""One decode step and the KV cache it writes into: what engine/decoding.py's loops call.

Eager steps use transformers' DynamicCache, its layers preallocated on GPUs (decode_cache); compiled
steps (`sampling.compile_step`: `fused` / `graphs`) use transformers' StaticCache, whose fixed
shapes and addresses let torch.compile record the step once as a CUDA graph.
"""

from __future__ import annotations

import functools
import inspect
import weakref

import torch


@functools.cache
def _preallocated_layer():
    """transformers' DynamicLayer, but keys and values are written into buffers sized once.

    DynamicLayer grows by `torch.cat`, copying the whole cache at every decode step: on an H200 that
    copy was 56% of the GPU time of a 2,048-row, 63-step decode (benchmarks/profile_gpu.py). Here
    each step writes its one position in place and the model sees a view of the filled part.
    """
    from transformers.cache_utils import DynamicLayer

    class PreallocatedLayer(DynamicLayer):
        def __init__(self, capacity: int, **kwargs):
            super().__init__(**kwargs)
            self.capacity, self.length = capacity, 0

        def lazy_initialization(self, key_states, value_states):
            super().lazy_initialization(key_states, value_states)
            shape = (*key_states.shape[:2], self.capacity)
            self.key_buffer = key_states.new_empty((*shape, key_states.shape[-1]))
            self.value_buffer = value_states.new_empty((*shape, value_states.shape[-1]))

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            end = self.length + key_states.shape[-2]
            if end > self.capacity:
                raise ValueError(f"decode cache holds {self.capacity} positions; {end} requested")
            self.key_buffer[:, :, self.length : end] = key_states
            self.value_buffer[:, :, self.length : end] = value_states
            self.length = end
            self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length

        def batch_select_indices(self, indices):
            if self.length:
                self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
                self.keys, self.values = self.key_buffer[:, :, : self.length], self.value_buffer[:, :, : self.length]

    return PreallocatedLayer


def decode_cache(model, capacity: int, preallocate: bool | None = None):
    """A DynamicCache for `capacity` positions, its plain layers preallocated (others left as they are).

    `preallocate`: by default on a GPU only; on CPU the demo-size models decoded faster with
    transformers' own growing layers (1.7-1.9 s vs 2.4-2.6 s for 3 x 256 rows of the demo policy).
    """
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=model.config)
    if preallocate is None:
        preallocate = next(model.parameters()).device.type != "cpu"
    if preallocate and cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
        cache.layers = [_preallocated_layer()(capacity) for _ in cache.layers]
    return cache


def token_logp(logits: torch.Tensor, token: torch.Tensor, lse: torch.Tensor | None = None) -> torch.Tensor:
    """(rows,) fp32 log p(token) under the full softmax of `logits` (rows, vocab): no temperature,
    top-k or top-p. `lse`: the logits' logsumexp when already computed."""
    lse = torch.logsumexp(logits.float(), -1) if lse is None else lse
    return logits.gather(1, token[:, None]).squeeze(1).float() - lse


def last_logits(model, input_ids: torch.Tensor, cache) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits of the last position (rows, vocab), their fp32 logsumexp (rows,)): one decode step."""
    logits = model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1, :]
    return logits, torch.logsumexp(logits.float(), -1)


@functools.cache
def compiled_step(mode: str):
    """last_logits through torch.compile: `fused` (Triton / C++ kernels) or `graphs` (those recorded
    as CUDA graphs, one launch per step). Parameters and the static cache are graph inputs, so the
    compilations serve every model of an architecture in the process (a CUDA graph is recorded per
    model and batch size). The first compilation takes the static cache's batch size as a constant;
    the second batch size compiles again with it symbolic, and that graph serves every later size
    (checked with TORCH_LOGS=recompiles on CPU: six sizes, two compilations)."""
    return torch.compile(last_logits, dynamic=True, mode="reduce-overhead" if mode == "graphs" else None)


# model -> {(rows, max_length): its StaticCache}; an entry goes when its model does.
_STATIC_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def static_cache(model, rows: int, max_length: int):
    """The StaticCache of `model`'s compiled steps for batches of `rows`, made once per model: its
    tensors keep their addresses across generate calls (every evaluation run of a model), so the CUDA
    graphs recorded for them replay instead of being recorded again."""
    from transformers import StaticCache

    caches = _STATIC_CACHES.setdefault(model, {})
    if (rows, max_length) not in caches:
        caches[rows, max_length] = StaticCache(config=model.config, max_cache_len=max_length)
    return caches[rows, max_length]


# The compile modes that failed in this process: later sampling skips them rather than pay again.
_FAILED: set[str] = set()


def compile_failed(mode: str) -> None:
    """Record that compiling the decode step in `mode` failed; decode_step_mode then says `eager`."""
    _FAILED.add(mode)


def decode_step_mode(sampling, model) -> str:
    """`sampling.compile_step` resolved for `model`: `auto` is `graphs` on CUDA and `eager` elsewhere,
    `graphs` is `fused` off CUDA, and a model transformers does not mark as compilable with a static
    cache (`_can_compile_fullgraph`) or whose forward takes no `cache` / `logits_to_keep`, or a mode
    whose compilation already failed in this process (compile_failed), decodes eagerly."""
    device = next(model.parameters()).device
    mode = sampling.compile_step
    if mode == "auto":
        mode = "graphs" if device.type == "cuda" else "eager"
    if mode == "graphs" and device.type != "cuda":
        mode = "fused"
    # The compiled step passes the cache as `cache` and asks for the last position's logits only: a
    # model whose forward does not name both (older or custom code) would ignore them silently.
    named = inspect.signature(model.forward).parameters
    compilable = getattr(model, "_can_compile_fullgraph", False) and {"cache", "logits_to_keep"} <= set(named)
    return mode if compilable and mode not in _FAILED else "eager"
