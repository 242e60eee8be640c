"""Evaluate the original policy and every trained model: the `evaluate` stage.

For each model, K runs (`evaluate.runs`) of M samples (`evaluate.samples`); run k uses seed
`evaluate.seed + k` for every model, so models are compared on common random numbers. Sampling is
the `sample` stage's (BOS prompt, same top-k / top-p / max_length). Per run: mean and std of the
reward, diversity (metrics.py: entropy in nats of the unigram distribution of policy token ids
over the run's texts) and positive rate (share of texts the classifier labels positive). Each run
writes `eval/<model>/run-<k>.parquet` (the texts and their scores) and then `run-<k>.json` (its
metrics and cache key), so an interrupted evaluation resumes at the first unfinished run. Run with:

    prefalign evaluate CONFIG
"""

from __future__ import annotations

from pathlib import Path

from prefalign.metrics import diversity, run_summary
from prefalign.sampling import sample_and_score
from prefalign.store import is_done, write_json


def evaluate_model(name: str, load_policy, clf, ctok, positive: int, cfg, run_keys: dict[int, str], root: Path,
                   log=print) -> None:  # fmt: skip
    """Run every evaluation run of one model whose key is not already on disk."""
    todo = [k for k, key in run_keys.items() if not is_done(root / f"run-{k:02d}.json", key)]
    if not todo:
        return
    policy, ptok = load_policy()
    for k in todo:
        df = sample_and_score(
            policy, ptok, clf, ctok, positive, cfg.evaluate.samples, cfg.sampling, cfg.evaluate.seed + k,
            cfg.reward.batch_size, root / f"run-{k:02d}.parquet", desc=f"eval {name} run {k}",
        )  # fmt: skip
        metrics = {
            **run_summary(df["reward"].to_numpy(), df["is_positive"].to_numpy()),
            "diversity": diversity(df["text"].tolist(), ptok),
            "mean_tokens": float(df["n_tokens"].mean()),
        }
        write_json(root / f"run-{k:02d}.json", {"key": run_keys[k], "model": name, "run": k, "seed": cfg.evaluate.seed + k,
                                                 "samples": len(df), "seconds": round(df.attrs["seconds"], 2), **metrics})  # fmt: skip
        log(f"  {name} run {k}: reward {metrics['reward_mean']:.3f}, diversity {metrics['diversity']:.3f}, "
            f"positive rate {metrics['positive_rate']:.3f} ({len(df) / df.attrs['seconds']:.0f} samples/s)")  # fmt: skip
    del policy
