"""Fluency: each text's mean log-probability per token under a causal LM that is not the policy.

A policy over-optimised against a classifier can reach a high reward with word salad ("fascinatingly
best if engaging and their an good"); the classifier cannot tell, the policy's own log-probabilities
cannot either (it learnt to write that), but a language model of real English scores it far below a
sentence (`evaluate.fluency`, with `prefalign:smollm2`: SmolLM2-135M). The scorer reads each text with
its own tokenizer, after its BOS token when it has one (so the first word is scored too: log p(w1 | BOS)),
else from the second token on.
"""

from __future__ import annotations

import numpy as np
import torch

from prefalign.engine.scoring import tokenizer_threads
from prefalign.models.loading import positions

# Texts per forward pass when no batch size is given: as many as keep the batch's logits (rows x longest
# text x vocabulary, fp32) within LOGIT_BUDGET elements (256 MiB), at most MAX_ROWS. A 49k-token vocabulary
# (SmolLM2) makes the logits, not the model, the memory of a batch.
LOGIT_BUDGET, MAX_ROWS = 2**26, 256


def _batch_ends(lengths: np.ndarray, batch_size: int | None, vocab: int) -> list[int]:
    """Where each batch of the length-sorted (ascending) rows ends (exclusive indices)."""
    n = len(lengths)
    if batch_size:
        return [min(i + batch_size, n) for i in range(0, n, batch_size)]
    ends, start = [], 0
    while start < n:  # the batch's last row is its longest
        end = start + 1
        while end < n and end - start < MAX_ROWS and (end + 1 - start) * lengths[end] * vocab <= LOGIT_BUDGET:
            end += 1
        ends.append(end)
        start = end
    return ends


def token_rows(texts: list[str], tokenizer, limit: int | None) -> list[list[int]]:
    """Each text's token ids as the scorer reads it: BOS first when the tokenizer has one, at most `limit`."""
    bos = tokenizer.bos_token_id
    room = None if limit is None else limit - (bos is not None)
    with tokenizer_threads():
        ids = tokenizer(list(texts), add_special_tokens=False, truncation=room is not None, max_length=room)[
            "input_ids"
        ]
    return [([bos] if bos is not None else []) + row for row in ids]


@torch.inference_mode()
def fluency_scores(texts: list[str], model, tokenizer, batch_size: int | None = None) -> np.ndarray:
    """Mean log-probability (nats) per scored token of each text under the causal LM `model`: float32 [n].

    A text's tokens t_0..t_{L-1} (t_0 = BOS when the tokenizer has one) are read at most the model's
    positions long; each token from t_1 on is scored, log p(t_i | t_<i), and the mean taken over them. A text
    with no scored token (empty, or one token without a BOS) is NaN. Texts go through the model length-sorted
    in right-padded batches (`batch_size` texts each; None: sized by their logits' memory), and the scores
    come back in input order.
    """
    scores = np.full(len(texts), np.nan, np.float32)
    if not texts:
        return scores
    rows = token_rows(texts, tokenizer, positions(model.config))
    lengths = np.array([len(row) for row in rows], dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    order = order[lengths[order] >= 2]  # rows with a scored token; the others stay NaN
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # masked: any id will do
    start = 0
    for end in _batch_ends(lengths[order], batch_size, model.config.vocab_size):
        idx, start = order[start:end], end
        width = int(lengths[idx].max())
        input_ids = torch.full((len(idx), width), pad, dtype=torch.long)  # [b, width]
        attention_mask = torch.zeros((len(idx), width), dtype=torch.long)  # [b, width]
        for row, i in enumerate(idx):
            input_ids[row, : lengths[i]] = torch.tensor(rows[i])
            attention_mask[row, : lengths[i]] = 1
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()  # [b, width-1, V]
        targets = input_ids[:, 1:]  # [b, width-1]: token i+1 is predicted at position i
        token_logp = logits.gather(-1, targets[..., None])[..., 0] - logits.logsumexp(-1)  # [b, width-1]
        scored = attention_mask[:, 1:].bool()  # [b, width-1]: where the target is a real token
        means = torch.where(scored, token_logp, 0.0).sum(-1) / scored.sum(-1)  # [b]
        scores[idx] = means.cpu().numpy()
    return scores
