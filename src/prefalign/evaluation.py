"""Evaluate the original policy and every trained model: the `evaluate` stage.

For each model, K runs (`evaluate.runs`) of M samples (`evaluate.samples`); run k uses seed
`evaluate.seed + k` for every model (and, with prompts, the same prompts), so models are compared
on common random numbers. Sampling is the `sample` stage's. Per run (metrics.py defines each):

- reward mean / std, shares above `evaluate.reward_thresholds`, percentiles 5/25/50/75/95;
- positive rate (share of texts the classifier labels positive);
- diversity (entropy in nats of the unigram distribution of policy token ids), distinct-1/2,
  mean completion length in tokens;
- `kl_seq` / `kl_token`: KL(policy || original) estimated on the run's own samples from the full
  (untruncated) log-probs of both models; exactly 0 for the original. The samples come from the
  top-k / top-p sampler, so this is a biased estimate of the true KL (see metrics.kl_estimate).

Each run writes `eval/<model>/run-<k>.parquet` (the texts and their scores) and then
`run-<k>.json` (its metrics and cache key), so an interrupted evaluation resumes at the first
unfinished run. Run with:

    prefalign evaluate CONFIG
"""

from __future__ import annotations

from pathlib import Path

from prefalign.metrics import distinct_n, kl_estimate, policy_token_ids, reward_profile, run_summary, token_entropy
from prefalign.sampling import sample_and_score
from prefalign.store import is_done, write_json


def run_metrics(df, tokenizer, thresholds) -> dict[str, float]:
    """Every per-run metric of one run's samples (a DataFrame as sample_and_score returns)."""
    ids = policy_token_ids(df["text"].tolist(), tokenizer)  # tokenized once for diversity and distinct-n
    out = {
        **run_summary(df["reward"].to_numpy(), df["is_positive"].to_numpy()),
        **reward_profile(df["reward"].to_numpy(), thresholds),
        "diversity": token_entropy(ids, tokenizer.pad_token_id),
        "distinct_1": distinct_n(ids, 1),
        "distinct_2": distinct_n(ids, 2),
        "mean_tokens": float(df["n_tokens"].mean()),
    }
    if "logp" in df.columns:
        out.update(kl_estimate(df["logp"].to_numpy(), df["logp_ref"].to_numpy(), df["n_scored"].to_numpy()))
    return out


def evaluate_model(name: str, load_policy, clf, ctok, positive: int, cfg, run_keys: dict[int, str], root: Path,
                   log=print, reference=None, prompts=None) -> None:  # fmt: skip
    """Run every evaluation run of one model whose key is not already on disk.

    `reference`: the original policy, for the KL estimate (None for the original itself: KL 0).
    `prompts(tokenizer, n, seed)`: per-row prompts, or None for BOS alone.
    """
    todo = [k for k, key in run_keys.items() if not is_done(root / f"run-{k:02d}.json", key)]
    if not todo:
        return
    policy, ptok = load_policy()
    e = cfg.evaluate
    for k in todo:
        seed = e.seed + k
        df = sample_and_score(
            policy, ptok, clf, ctok, positive, e.samples, cfg.sampling, seed, cfg.reward.batch_size,
            root / f"run-{k:02d}.parquet", desc=f"eval {name} run {k}",
            prompts=prompts(ptok, e.samples, seed) if prompts else None, reference=reference if e.kl else None,
        )  # fmt: skip
        metrics = run_metrics(df, ptok, e.reward_thresholds)
        if e.kl and reference is None:  # the original: policy and reference are the same model
            metrics.update(kl_seq=0.0, kl_token=0.0)
        write_json(root / f"run-{k:02d}.json", {"key": run_keys[k], "model": name, "run": k, "seed": seed,
                                                 "samples": len(df), "seconds": round(df.attrs["seconds"], 2), **metrics})  # fmt: skip
        kl = f", KL {metrics['kl_seq']:.2f}" if "kl_seq" in metrics else ""
        log(f"  {name} run {k}: reward {metrics['reward_mean']:.3f}, diversity {metrics['diversity']:.3f}, "
            f"positive rate {metrics['positive_rate']:.3f}{kl} ({len(df) / df.attrs['seconds']:.0f} samples/s)")  # fmt: skip
    del policy
