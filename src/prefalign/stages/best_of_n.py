"""Best-of-N reference policies of the original (`BestOfN` items, `baselines.best_of_n`).

A best-of-N policy draws N texts from the original and keeps the one with the highest reward: the
classic reward-KL baseline a trained model has to beat (a method that does not beat it at equal
KL buys nothing a reranker could not). For evaluation run k:

- the pool: `max(ladder)` draws of `chosen` texts each. Draw 0 is the first `chosen` texts of the
  original's evaluation run k (so best-of-1 is the original's evaluation, text for text); draws
  1.. are sampled in one pass with seed pool_seed(evaluate.seed + k) into `run-<k>-pool.parquet`,
  draw j's row i (pool row (j - 1) x chosen + i) from row i's prompt, so a row's draws share its
  prompt; `run-<k>-pool.json` (its key) is written after it, and a finished pool is not sampled again;
- the choice: for each N of the ladder and each row, the draw with the highest reward among draws
  0..N-1 (metrics.best_of_n_choice): nested prefixes of one pool, so the ladder costs one pass;
  `run-<k>-choices.parquet` holds every choice (`n`, `row`, `draw` and the chosen text's columns),
  so anyone can recompute it from the draws;
- the metrics: those of an evaluation run (stages/evaluate.run_metrics) on the N chosen texts, with
  KL the analytic log N - (N-1)/N nats (best_of_n_kl; no sample-based estimate exists for it).

`run-<k>.json` (written last) holds run k's key and the metrics of every N.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd

from prefalign.engine.metrics import best_of_n_choice
from prefalign.models.loading import load_policy
from prefalign.pipeline.evidence_items import BestOfN, best_of_n_kl, pool_seed
from prefalign.pipeline.services import Services, release_memory
from prefalign.pipeline.store import is_done, read_parquet, write_json, write_parquet
from prefalign.stages.evaluate import run_metrics, stored_runs
from prefalign.stages.sample import corpus_prompts_for, sample_in_shards

# The columns a pool keeps of each sampled text (an evaluation run's KL columns are not needed).
POOL_COLUMNS = ("text", "reward", "positive_prob", "is_positive", "n_tokens", "prompt")


def best_of_n(item: BestOfN, services: Services) -> None:
    """Every run of `item` whose key is not on disk: its pool, its choices, its metrics."""
    todo = [k for k in range(item.runs) if not services.ranks.all_true(item.run_done(k))]
    if not todo:
        return
    services.log(
        f"best-of-N {list(item.ladder)}: {item.runs} runs, pools of {item.draws} x {item.chosen} texts "
        f"({(item.draws - 1) * item.chosen} to sample per run)"
    )
    policy = None
    for k in todo:
        start = time.time()
        if item.draws > 1 and not services.ranks.all_true(pool_done(item, k)):
            policy = policy or _load_original(item, services)
            _sample_pool(item, k, policy, services)
        if services.ranks.main:
            _choose_and_measure(item, k, services, time.time() - start)
        services.ranks.wait()
    del policy
    release_memory()


def pool_done(item: BestOfN, k: int) -> bool:
    return is_done(item.run_path(k, "-pool.json"), item.pool_key(k)) and item.run_path(k, "-pool.parquet").exists()


def _load_original(item: BestOfN, services: Services):
    o = item.original
    return load_policy(
        o.ref, o.revision, services.device, services.dtype, item.sampling.max_length, o.trust_remote_code
    )


def _sample_pool(item: BestOfN, k: int, policy, services: Services) -> None:
    """Run k's draws 1..: (draws - 1) x chosen texts from the original, row i of each draw on the
    prompt of the evaluation run's row i."""
    model, tokenizer = policy
    prompts = corpus_prompts_for(item.sampling, tokenizer, item.evaluation.samples, item.run_seed(k))
    df = sample_in_shards(
        model,
        tokenizer,
        services,
        (item.draws - 1) * item.chosen,
        item.sampling,
        pool_seed(item.run_seed(k)),
        item.run_path(k, "-pool.parquet"),
        f"best-of-N run {k} pool",
        prompts=prompts[: item.chosen] * (item.draws - 1) if prompts is not None else None,
    )
    if df is not None:  # the main process: the pool is whole
        write_json(item.run_path(k, "-pool.json"), {"key": item.pool_key(k), "seconds": round(df.attrs["seconds"], 2)})


def read_pool(item: BestOfN, k: int, services: Services) -> list[pd.DataFrame]:
    """Run k's draws, draw 0 (the original's evaluation run) first, each `chosen` rows. With reward.terms
    the pool's rewards are the weighted sums under the weights of now (the evaluation run's already are)."""
    first = read_parquet(item.evaluation.run_path(k, ".parquet")).head(item.chosen)
    draws = [first]
    if item.draws > 1:
        pool = read_parquet(item.run_path(k, "-pool.parquet"))
        if item.reward.terms:
            pool["reward"] = item.reward.weighted_sum(pool, services.normalize_stats())
        draws += [pool.iloc[j * item.chosen : (j + 1) * item.chosen] for j in range(item.draws - 1)]
    columns = POOL_COLUMNS + item.reward.columns
    return [d[[c for c in columns if c in d.columns]].reset_index(drop=True) for d in draws]


def choices(draws: list[pd.DataFrame], ladder) -> pd.DataFrame:
    """Every best-of-N choice of one pool: columns n, row, draw, then the chosen text's columns."""
    rewards = np.stack([d["reward"].to_numpy() for d in draws])  # (draws, rows)
    rows = np.arange(rewards.shape[1])
    pool = pd.concat(draws, ignore_index=True)  # draw j's row i at j * rows + i
    out = []
    for n in ladder:
        picked = best_of_n_choice(rewards, n)
        chosen = pool.iloc[picked * len(rows) + rows].reset_index(drop=True)
        out.append(pd.concat([pd.DataFrame({"n": n, "row": rows, "draw": picked}), chosen], axis=1))
    return pd.concat(out, ignore_index=True)


def _choose_and_measure(item: BestOfN, k: int, services: Services, seconds: float) -> None:
    table = choices(read_pool(item, k, services), item.ladder)
    write_parquet(table, item.run_path(k, "-choices.parquet"))
    tokenizer = services.policy_tokenizer(item.original.ref, item.original.revision)
    per_n = {}
    for n, chosen in table.groupby("n", sort=True):
        metrics = run_metrics(chosen, tokenizer, item.evaluation.reward_thresholds)
        if item.evaluation.kl:
            metrics.update(kl_seq=best_of_n_kl(int(n)), kl_token=math.nan)
        per_n[str(int(n))] = metrics
    write_json(
        item.run_path(k, ".json"),
        {"key": item.run_key(k), "run": k, "seed": item.run_seed(k), "samples": item.chosen, "per_n": per_n},
    )
    top = per_n[str(item.draws)]
    services.log(
        f"  best-of-N run {k} ({seconds:.0f}s): reward "
        + ", ".join(f"N={n} {m['reward_mean']:.3f}" for n, m in per_n.items())
        + f"; best-of-{item.draws} diversity {top['diversity']:.3f}"
    )


def best_of_n_results(item: BestOfN) -> list[tuple[dict, list[dict]]]:
    """(describing columns, the metrics of each run) of every best-of-N policy, as stored."""
    runs = [run["per_n"] for run in stored_runs(item, "best-of-N")]
    return [(item.row(n), [run[str(n)] for run in runs]) for n in item.ladder]
