"""The `pairs` stage: turn a `Samples` item's scored texts into chosen/rejected pairs under one rule.

The rules themselves are pure functions in engine/pair_rules.py. The pair file holds what TRL's
DPOTrainer reads (`prompt`, `chosen`, `rejected`) plus the rewards and sample indices; the prompt
is the policy's BOS token (with an empty prompt TRL 1.16 never scores the first completion token),
followed by the sample's corpus prompt when there is one. `<name>.meta.json` (key, reward gaps) is
written last. A request the samples cannot meet stops with a `PairError` saying why. Run with:

    prefalign pairs CONFIG
"""

from __future__ import annotations

import functools

import pandas as pd

from prefalign.engine.pair_rules import pairs_frame
from prefalign.models.loading import bos_prompt
from prefalign.pipeline.items import Pairs
from prefalign.pipeline.services import Services
from prefalign.pipeline.store import read_parquet, write_json, write_parquet


@functools.lru_cache(maxsize=1)
def _read_samples(path: str, key: str) -> pd.DataFrame:
    """The samples file, read once for all the pair rules that draw from it (`key` ties it to its content)."""
    return read_parquet(path)


def make_pairs(item: Pairs, services: Services) -> None:
    samples = _read_samples(str(item.samples.path), item.samples.key)
    policy = item.samples.policy
    prompt = bos_prompt(services.policy_tokenizer(policy.ref, policy.revision))
    df = pairs_frame(samples, prompt, strategy=item.strategy, count=item.count, seed=item.seed, **item.rule)
    write_parquet(df, item.path)
    gap = df.chosen_reward - df.rejected_reward
    write_json(
        item.meta,
        {
            "key": item.key,
            "pairs": len(df),
            "mean_gap": float(gap.mean()),
            "min_gap": float(gap.min()),
            "chosen_reward_mean": float(df.chosen_reward.mean()),
            "chosen_reward_std": float(df.chosen_reward.std()),
            "rejected_reward_mean": float(df.rejected_reward.mean()),
        },
    )
    services.log(f"{item.name}: {len(df)} pairs, mean reward gap {gap.mean():.3f}")
