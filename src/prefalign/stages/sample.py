"""The `sample` stage: draw a `Samples` item's texts from its policy and score each one.

The policy is the original (the main samples every pair rule draws from) or, for an iterative
round, the previous round's model. Texts start from the BOS token, or from BOS + a corpus prompt
when `sampling.prompts` is set; the engine (engine/decoding.py) streams them with their rewards to
`samples.parquet`, and `samples.meta.json` (key, timing, reward summary, number of processes) is
written last. When several processes run it, each samples its own shard of the rows under its own
seed (distributed.shard_seed: the texts depend on the seed and the number of processes, never on
timing) and the main process merges the shards in order. Run with:

    prefalign sample CONFIG
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from prefalign.engine.decode_step import decode_step_mode
from prefalign.engine.reward_terms import term_stats
from prefalign.engine.sample_file import sample_and_score
from prefalign.models.loading import load_policy
from prefalign.pipeline.distributed import shard_seed
from prefalign.pipeline.items import Samples, trusts_code
from prefalign.pipeline.services import Services
from prefalign.pipeline.store import atomic_path, read_json, scratch_beside, write_json, write_parquet


def corpus_prompts_for(sampling, tokenizer, n: int, seed: int):
    """Per-row (token ids, text) prompts for n samples, or None when sampling starts from BOS alone."""
    if sampling.prompts is None:
        return None
    from prefalign.engine.prompts import corpus_prompts

    return corpus_prompts(sampling.prompts, tokenizer, n, seed)


def sample_in_shards(
    policy,
    policy_tokenizer,
    services: Services,
    n: int,
    sampling,
    seed: int,
    out_path: Path,
    desc: str,
    reference=None,
    prompts=None,
) -> pd.DataFrame | None:
    """sample_and_score over the run's processes: n texts in `out_path`. Each process samples its
    shard of the rows (their prompts: rows of the one prompt list drawn for all n with `seed`, or the
    `prompts` given, one per row) into a part file;
    the main process merges the parts in shard order and returns the whole table (`attrs["seconds"]`:
    the wall time; `attrs["phase_seconds"]`: its own shard's, by phase), the others return None."""
    ranks = services.ranks
    if prompts is None:
        prompts = corpus_prompts_for(sampling, policy_tokenizer, n, seed)
    start, stop = ranks.shard(n)
    part = out_path if ranks.count == 1 else scratch_beside(out_path, f"part-{ranks.index}-of-{ranks.count}")
    t0 = time.time()
    df = sample_and_score(
        policy,
        policy_tokenizer,
        None,
        None,
        None,
        stop - start,
        sampling,
        shard_seed(seed, ranks.index, ranks.count),
        None,
        part,
        desc=desc,
        reference=reference,
        prompts=prompts[start:stop] if prompts is not None else None,
        scorer=services.reward_scorer(),
    )
    if ranks.count == 1:
        return df
    ranks.wait()  # every part is written
    if not ranks.main:
        return None
    parts = [scratch_beside(out_path, f"part-{i}-of-{ranks.count}") for i in range(ranks.count)]
    with atomic_path(out_path) as tmp:
        pq.write_table(pa.concat_tables([pq.read_table(p) for p in parts]), tmp)
    for p in parts:
        p.unlink()
    phases = df.attrs["phase_seconds"]  # the main process's own shard: the others' are alike
    df = pd.read_parquet(out_path)
    df.attrs["seconds"], df.attrs["phase_seconds"] = time.time() - t0, phases
    return df


def sample(item: Samples, services: Services) -> None:
    sampling = item.sampling
    if reusable_texts(item.meta, "texts_key", item.texts_key, item.path) and item.reward.terms:
        # Only the terms' weights changed: the texts and their term values stand, the sum is redone.
        if services.ranks.main:
            df = reweigh(item.path, item.reward, _stats_for(item, services))
            _write_meta(item, df, services, read_json(item.meta) or {})
            services.log(f"{item.name}: rewards re-weighed ({len(df)} texts kept: only reward.terms' weights changed)")
        services.ranks.wait()
        return
    services.log(f"{item.name}: {item.count} texts from {item.policy.ref} on {services.device}")
    policy, policy_tokenizer = load_policy(
        item.policy.ref,
        item.policy.revision,
        services.device,
        services.dtype,
        sampling.max_length,
        trusts_code(item.policy),
    )
    mode = decode_step_mode(sampling, policy) if sampling.engine == "fast" else "eager"
    if mode != "eager":
        services.log(
            f"  decode step compiled (sampling.compile_step: {mode}); the first two batch sizes of the process "
            "compile it, seconds to a minute each"
        )
    df = sample_in_shards(policy, policy_tokenizer, services, item.count, sampling, item.seed, item.path, item.name)
    if df is None:  # not the main process: its shard is merged there
        return
    seconds = df.attrs["seconds"]
    timing = {
        "seconds": round(seconds, 2),
        "samples_per_second": round(len(df) / seconds, 1),
        "world_size": services.ranks.count,
        "phase_seconds": df.attrs["phase_seconds"],
    }
    if item.reward.terms:  # the sum, now that every text has its term values (and the stats exist)
        df = reweigh(item.path, item.reward, _stats_for(item, services))
    _write_meta(item, df, services, timing)
    services.log(
        f"{item.name}: done in {seconds:.1f}s ({len(df) / seconds:.0f} samples/s), mean reward "
        f"{df.reward.mean():.3f}, positive rate {df.is_positive.mean():.3f}"
    )


def _write_meta(item: Samples, df: pd.DataFrame, services: Services, timing: dict) -> None:
    """samples.meta.json: the key (written last), the texts key, timing, the reward's summary and, with
    reward.terms, each term's mean and std over these texts (what `normalize` uses for the original's)."""
    timing = {k: timing[k] for k in ("seconds", "samples_per_second", "world_size", "phase_seconds") if k in timing}
    meta = {"key": item.key, "texts_key": item.texts_key, "samples": len(df), **timing}
    meta.update(reward_mean=float(df.reward.mean()), positive_rate=float(df.is_positive.mean()))
    if item.reward.terms:
        meta["term_stats"] = term_stats(item.reward.term_values(df))
    write_json(item.meta, meta)


def _stats_for(item: Samples, services: Services) -> dict | None:
    """The stats that standardise the terms: these samples' own when they are the original's samples the
    stats come from; else services.normalize_stats (None without normalize)."""
    if item.reward.normalize and item.texts_key == item.reward.stats_key:
        return term_stats(item.reward.term_values(pd.read_parquet(item.path, columns=list(item.reward.columns))))
    return services.normalize_stats()


def reusable_texts(meta_path: Path, field: str, texts_key: str, path: Path) -> bool:
    """Whether `path` holds texts scored under `texts_key` (as its metadata's `field` says)."""
    meta = read_json(meta_path)
    return meta is not None and meta.get(field) == texts_key and path.exists()


def reweigh(path: Path, reward, stats: dict | None) -> pd.DataFrame:
    """Rewrite `path`'s `reward` column as the weighted sum of its term columns under `reward`'s weights
    (and `stats`, with normalize); returns the table written."""
    df = pd.read_parquet(path)
    df["reward"] = reward.weighted_sum(df, stats)
    write_parquet(df, path)
    return df
