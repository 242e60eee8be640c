"""The preference pairs a DPO training reads, as the dataset its trainer gets.

With the recipes' `group_by_length`, the pairs are put in a random order in which every batch has
similar lengths (`length_grouped_order`), and the trainer reads them in that order. When the run's
processes train one model together, they share one on-disk dataset: TRL caches the reference
log-probs beside it, written by the main process and read by all.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from prefalign.pipeline.distributed import Ranks
from prefalign.pipeline.store import scratch_beside


def length_grouped_order(lengths, batch_size: int, seed: int, megabatch: int = 50) -> np.ndarray:
    """A random order of the examples in which every run of `batch_size` has similar lengths.

    As transformers' LengthGroupedSampler: shuffle, cut into megabatches of `megabatch * batch_size`,
    sort each megabatch by length, longest first. Each batch is then padded to nearly its own
    length, and the reference pre-pass (which reads the data in this order) pads little too.
    """
    lengths = np.asarray(lengths)
    perm = np.random.default_rng(seed).permutation(len(lengths))
    size = max(1, megabatch * batch_size)
    chunks = [perm[i : i + size] for i in range(0, len(perm), size)]
    return np.concatenate([c[np.argsort(-lengths[c], kind="stable")] for c in chunks]) if chunks else perm


def length_grouped(pairs: pd.DataFrame, tokenizer, batch_size: int, seed: int) -> pd.DataFrame:
    """`pairs` in length_grouped_order of each pair's longer side (prompt + completion, in tokens)."""
    ids = tokenizer(list(pairs["prompt"] + pairs["chosen"]) + list(pairs["prompt"] + pairs["rejected"]))["input_ids"]
    longest = np.maximum(*np.split(np.array([len(i) for i in ids]), 2))
    return pairs.iloc[length_grouped_order(longest, batch_size, seed)]


def pairs_dataset(pairs: pd.DataFrame, out_dir: Path, ranks: Ranks):
    """(the datasets.Dataset of `pairs`, the on-disk folder the processes share or None).

    With several processes the dataset is saved beside `out_dir` under a temporary name (so a killed
    run's is cleared) by the main process and loaded by all; remove it with `drop_shared`."""
    from datasets import Dataset, load_from_disk

    if ranks.count == 1:
        return Dataset.from_pandas(pairs, preserve_index=False), None
    shared = scratch_beside(Path(out_dir), "pairs")
    if ranks.main:
        shutil.rmtree(shared, ignore_errors=True)
        Dataset.from_pandas(pairs, preserve_index=False).save_to_disk(str(shared))
    ranks.wait()
    return load_from_disk(str(shared)), shared


def drop_shared(shared: Path | None, ranks: Ranks) -> None:
    """Remove pairs_dataset's shared folder once every process is done with it."""
    if shared is not None:
        ranks.wait()
        if ranks.main:
            shutil.rmtree(shared, ignore_errors=True)
