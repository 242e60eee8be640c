"""Sample texts from the policy, score them with the classifier, and stream both to a Parquet
file: what the `sample` stage and every evaluation run write."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from prefalign.engine.decoding import generate
from prefalign.engine.reward_terms import ClassifierScorer
from prefalign.pipeline.store import atomic_path

# The phases of sample_and_score's wall time: decoding (until the tokens reach the host), ids to
# text, the KL's log-probs (with a reference), the classifier (tokenization and forward), writing.
PHASES = ("decode", "texts", "kl", "score", "write")


def sample_and_score(
    policy,
    policy_tokenizer,
    classifier,
    classifier_tokenizer,
    positive_index: int,
    n: int,
    sampling,
    seed: int,
    reward_batch: int | None,
    out_path: Path,
    desc: str = "sample",
    prompts: list[tuple[list[int], str]] | None = None,
    reference=None,
    scorer=None,
) -> pd.DataFrame:
    """Generate and score n texts, streaming them to `out_path` (Parquet) atomically.

    `prompts`: one (token ids, text) per row, or None for BOS alone; the classifier then scores
    prompt text + completion. Columns: `text` (the completion), `reward`, `positive_prob`,
    `is_positive` (the reward columns: `scorer`'s, by default the classifier's, engine/reward_terms.py; a
    composed reward adds reward_<term>), `n_tokens` (generated tokens before EOS), `prompt` (with prompts), `logp`,
    `logp_ref` and `n_scored` (tokens in those sums: n_tokens plus the EOS when there is one), with
    a reference model. `attrs`: `seconds` (the wall time) and `phase_seconds` (the host's wall time
    by phase, PHASES; `kl` only with a reference; the rest is the Parquet file's closing and reading).
    """
    if scorer is None:
        scorer = ClassifierScorer(classifier, classifier_tokenizer, positive_index, reward_batch)
    schema = _schema(scorer.fields, with_prompts=prompts is not None, with_reference=reference is not None)
    start = time.time()
    prompt_ids = [ids for ids, _ in prompts] if prompts is not None else None
    chunks = generate(policy, policy_tokenizer, n, sampling, seed, desc=desc, prompts=prompt_ids, reference=reference)
    phases = dict.fromkeys((phase for phase in PHASES if phase != "kl" or reference is not None), 0.0)
    with atomic_path(out_path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for chunk in chunks:
            for phase, seconds in chunk["seconds"].items():
                phases[phase] += seconds
            scoring = time.perf_counter()
            heads = [prompts[i][1] for i in chunk["index"]] if prompts is not None else None
            full = [h + t for h, t in zip(heads, chunk["text"])] if heads is not None else chunk["text"]
            scores = scorer(full, chunk["text"], chunk["n_tokens"])
            writing = time.perf_counter()
            phases["score"] += writing - scoring
            columns = {"text": chunk["text"], **scores, "n_tokens": chunk["n_tokens"].astype(np.int32)}
            if heads is not None:
                columns["prompt"] = heads
            if reference is not None:
                columns.update(
                    logp=chunk["logp"], logp_ref=chunk["logp_ref"], n_scored=chunk["n_scored"].astype(np.int32)
                )
            writer.write_table(pa.table(columns, schema=schema))
            phases["write"] += time.perf_counter() - writing
    df = pd.read_parquet(out_path)
    df.attrs["seconds"] = time.time() - start
    df.attrs["phase_seconds"] = {phase: round(seconds, 3) for phase, seconds in phases.items()}
    return df


def _schema(reward_fields, with_prompts: bool, with_reference: bool) -> pa.Schema:
    fields = [("text", pa.string()), *reward_fields[:3], ("n_tokens", pa.int32()), *reward_fields[3:]]
    fields += [("prompt", pa.string())] if with_prompts else []
    fields += [("logp", pa.float32()), ("logp_ref", pa.float32()), ("n_scored", pa.int32())] if with_reference else []
    return pa.schema(fields)
