"""Score texts with the reward classifier: reward = logit of the positive class.

The positive class is found by name in `config.id2label` (`reward.positive_label`), never by
index; a one-output classifier (`reward.single_logit`) has its logit as the reward, positive when
above 0. Texts are tokenized with the classifier's own tokenizer, special tokens added ([CLS]/[SEP]
for BERT) and truncated to its maximum length. Batches are formed from length-sorted texts so
little compute is spent on padding, and results are put back in input order.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import torch


@contextlib.contextmanager
def tokenizer_threads():
    """Let HF tokenizers batch-encode and -decode on every core inside the block.

    The CLI sets TOKENIZERS_PARALLELISM=false (a process that forks after the tokenizers used their
    thread pool prints a warning, and its child runs single-threaded). A batch of 5,000 texts is
    encoded for the classifier, decoded from ids and re-encoded for the diversity metric once per
    sample stage or evaluation run, which on one core takes a large share of a GPU's run time; the
    setting is read at each call, so turning it on here and back off afterwards gives those calls
    the cores while any fork elsewhere still finds parallelism switched off.
    """
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    try:
        yield
    finally:
        if old is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old


def max_input_length(model, tokenizer) -> int:
    """The classifier's real input limit: the smaller of its position table and its tokenizer's limit."""
    limits = (getattr(model.config, "max_position_embeddings", None), tokenizer.model_max_length)
    limits = [int(x) for x in limits if x and 0 < x < 1_000_000]  # tokenizers use 1e30 for "unset"
    return min(limits) if limits else 512


# Texts per classifier batch when none is set: 128 on CPU; on a GPU as many as fit this many tokens
# (at most GPU_ROWS), so short texts go in few large batches (each call costs launch time on the host).
CPU_ROWS, GPU_TOKENS, GPU_ROWS = 128, 65_536, 1024


def _batch_ends(lengths: np.ndarray, batch_size: int | None, cuda: bool) -> list[int]:
    """Where each batch of the length-sorted texts ends (exclusive indices)."""
    n = len(lengths)
    if batch_size or not cuda:
        step = batch_size or CPU_ROWS
        return [min(i + step, n) for i in range(0, n, step)]
    ends, start = [], 0
    while start < n:  # the batch's last text is its longest: rows x that length within GPU_TOKENS
        end = start + 1
        while end < n and end - start < GPU_ROWS and (end + 1 - start) * lengths[end] <= GPU_TOKENS:
            end += 1
        ends.append(end)
        start = end
    return ends


@torch.inference_mode()
def score_texts(
    texts: list[str], model, tokenizer, positive_index: int, batch_size: int | None = None
) -> dict[str, np.ndarray]:
    """Return `reward` (positive logit), `positive_prob` (softmax) and `is_positive` (argmax) per text.

    `batch_size`: texts per classifier call; None: CPU_ROWS on CPU, a token budget on a GPU.
    """
    n = len(texts)
    reward, prob, is_pos = np.empty(n, np.float32), np.empty(n, np.float32), np.empty(n, bool)
    if n == 0:
        return {"reward": reward, "positive_prob": prob, "is_positive": is_pos}
    with tokenizer_threads():
        enc = tokenizer(list(texts), truncation=True, max_length=max_input_length(model, tokenizer))
    ids = enc["input_ids"]
    lengths = np.array([len(x) for x in ids])
    order = np.argsort(lengths, kind="stable")
    device = next(model.parameters()).device
    start = 0
    for end in _batch_ends(lengths[order], batch_size, device.type == "cuda"):
        idx, start = order[start:end], end
        batch = tokenizer.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float()
        if logits.shape[-1] == 1:  # one output (reward.single_logit): positive means a positive logit
            positive = logits[:, 0].sigmoid(), logits[:, 0] > 0
        else:
            positive = logits.softmax(-1)[:, positive_index], logits.argmax(-1) == positive_index
        # One copy to the host per batch (each copy waits for the GPU).
        columns = torch.stack([logits[:, positive_index], positive[0], positive[1].float()]).cpu().numpy()
        reward[idx], prob[idx], is_pos[idx] = columns[0], columns[1], columns[2] > 0.5
    return {"reward": reward, "positive_prob": prob, "is_positive": is_pos}
