"""Prompts from a corpus: the first few tokens of real reviews, as TRL's sentiment example and the
DPO paper's IMDb experiment use them.

For a run that needs n samples with k samples per prompt, ceil(n / k) texts are drawn from the
corpus (a seeded shuffle; the corpus is cycled when it holds fewer usable texts), each is tokenized
with the policy's tokenizer without special tokens, and its first L tokens become a prompt, L drawn
uniformly from [min_tokens, max_tokens] (texts shorter than min_tokens are skipped). The prompt text
is those tokens decoded (prompt text + completion text is then the generated review, up to a
character split across the boundary). Each prompt is repeated k times, consecutively. The pure part (`cut_prompts`) is separate from corpus loading.
"""

from __future__ import annotations

import functools

import numpy as np


def cut_prompts(
    token_ids: list[list[int]], n: int, per_prompt: int, min_tokens: int, max_tokens: int, seed: int
) -> list[list[int]]:
    """Prompt token ids for n rows: ceil(n / per_prompt) prompts, each repeated per_prompt times (cut to n).

    `token_ids`: tokenized corpus texts. Raises ValueError when no text has `min_tokens` tokens.
    """
    if not 1 <= min_tokens <= max_tokens:
        raise ValueError(f"need 1 <= min_tokens <= max_tokens, got {min_tokens}, {max_tokens}")
    usable = [i for i, ids in enumerate(token_ids) if len(ids) >= min_tokens]
    if not usable:
        raise ValueError(f"no corpus text has {min_tokens} tokens or more")
    rng = np.random.default_rng(seed)
    count = -(-n // per_prompt)
    order = np.concatenate([rng.permutation(usable) for _ in range(-(-count // len(usable)))])[:count]
    cut = rng.integers(min_tokens, max_tokens + 1, size=count)
    prompts = [token_ids[i][: int(c)] for i, c in zip(order, cut)]
    return [p for p in prompts for _ in range(per_prompt)][:n]


class _SameTokenizer:
    """A tokenizer as a cache key: two loads of the same files (the planner's, to count the distinct
    prompts, and the sample stage's) are one key, so a corpus is tokenized once per process."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.key = (type(tokenizer).__name__, tokenizer.name_or_path, len(tokenizer))

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other) -> bool:
        return isinstance(other, _SameTokenizer) and self.key == other.key


def _corpus_ids(corpus: str, split: str | None, subset: str | None, text_column: str, tokenizer) -> list[list[int]]:
    from prefalign.data.corpus import CorpusError, corpus_identity

    try:  # the corpus's identity in the key too: a local file edited since is read again
        identity = corpus_identity(corpus)
    except CorpusError:  # no such file: load_texts says so
        identity = None
    return _cached_ids(corpus, split, subset, text_column, _SameTokenizer(tokenizer), identity)


@functools.lru_cache(maxsize=4)
def _cached_ids(
    corpus: str, split: str | None, subset: str | None, text_column: str, same, identity
) -> list[list[int]]:
    from prefalign.data.corpus import CorpusError, load_texts

    tokenizer = same.tokenizer
    texts = load_texts(
        corpus, text_column=text_column, split=split, subset=subset
    )  # labels are neither read nor needed
    if not texts:
        raise CorpusError(f"corpus {corpus!r}: no text to cut prompts from (every row's {text_column!r} is empty)")
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def corpus_prompts(cfg, tokenizer, n: int, seed: int) -> list[tuple[list[int], str]]:
    """(token ids, text) for each of n rows, from the `sampling.prompts` section `cfg`."""
    from prefalign.data.corpus import CorpusError

    ids = _corpus_ids(cfg.corpus, cfg.split, cfg.subset, cfg.text_column, tokenizer)
    if not any(len(i) >= cfg.min_tokens for i in ids):
        raise CorpusError(
            f"corpus {cfg.corpus!r}: none of its {len(ids)} texts has sampling.prompts.min_tokens = "
            f"{cfg.min_tokens} policy tokens (the longest has {max(map(len, ids))}); lower min_tokens "
            "or use longer texts"
        )
    prompts = cut_prompts(ids, n, cfg.per_prompt, cfg.min_tokens, cfg.max_tokens, seed)
    texts = {}
    out = []
    for p in prompts:
        key = tuple(p)
        if key not in texts:
            texts[key] = tokenizer.decode(p, skip_special_tokens=True)
        out.append((list(p), texts[key]))
    return out
