"""The `evaluate` stage: seeded evaluation runs of one model (`Evaluation` items), the original included.

For each model, K runs (`evaluate.runs`) of M samples (`evaluate.samples`); run k uses seed
`evaluate.seed + k` for every model (and, with prompts, the same prompts), so models are compared
on common random numbers. Sampling is the `sample` stage's. Per run (metrics.py defines each):

- reward mean / std, shares above `evaluate.reward_thresholds`, percentiles 5/25/50/75/95;
- positive rate (share of texts the classifier labels positive);
- diversity (entropy in nats of the unigram distribution of policy token ids), distinct-1/2,
  mean completion length in tokens, `broken_share` (texts with undecodable byte tokens, U+FFFD);
- `kl_seq` / `kl_token`: KL(policy || original) estimated on the run's own samples from the full
  (untruncated) log-probs of both models; exactly 0 for the original. The samples come from the
  top-k / top-p sampler, so this is a biased estimate of the true KL (see metrics.kl_estimate).

Each run writes `eval/<model>/run-<k>.parquet` (the texts and their scores) and then
`run-<k>.json` (its metrics, cache key and number of processes), so an interrupted evaluation
resumes at the first unfinished run. With several processes, each samples its shard of every run
(as the sample stage does) and the main process computes the metrics. Run with:

    prefalign evaluate CONFIG
"""

from __future__ import annotations

from prefalign.engine.metrics import (
    broken_share,
    distinct_n,
    kl_estimate,
    policy_token_ids,
    reward_profile,
    run_summary,
    token_entropy,
)
from prefalign.engine.scoring import tokenizer_threads
from prefalign.errors import PrefalignError
from prefalign.models.loading import load_policy
from prefalign.pipeline.items import Evaluation, Original, trusts_code
from prefalign.pipeline.services import Services, release_memory
from prefalign.pipeline.store import read_json, write_json
from prefalign.stages.sample import reusable_texts, reweigh, sample_in_shards

# The fields of run-<k>.json that describe the run; every other field is a metric.
RUN_INFO = ("key", "texts_key", "model", "run", "seed", "samples", "seconds", "phase_seconds", "world_size")


def run_metrics(df, tokenizer, thresholds) -> dict[str, float]:
    """Every per-run metric of one run's samples (a DataFrame as sample_and_score returns)."""
    with tokenizer_threads():
        ids = policy_token_ids(df["text"].tolist(), tokenizer)  # tokenized once for diversity and distinct-n
    out = {
        **run_summary(df["reward"].to_numpy(), df["is_positive"].to_numpy()),
        **reward_profile(df["reward"].to_numpy(), thresholds),
        "diversity": token_entropy(ids, tokenizer.pad_token_id),
        "distinct_1": distinct_n(ids, 1),
        "distinct_2": distinct_n(ids, 2),
        "mean_tokens": float(df["n_tokens"].mean()),
        "broken_share": broken_share(df["text"].tolist()),
        # reward.terms: each term's mean beside the sum's (columns reward_<term>)
        **{f"{c}_mean": float(df[c].mean()) for c in df.columns if c.startswith("reward_")},
    }
    if "logp" in df.columns:
        out.update(kl_estimate(df["logp"].to_numpy(), df["logp_ref"].to_numpy(), df["n_scored"].to_numpy()))
    return out


def evaluate(item: Evaluation, services: Services) -> None:
    """Every run of one `Evaluation` item whose key is not already on disk."""
    todo = [k for k in range(item.runs) if not item.run_done(k)]
    if not todo:
        return
    reweighed = [k for k in todo if _only_weights_changed(item, k)]
    for k in reweighed:  # reward.terms' weights changed: the run's texts and term values stand
        if services.ranks.main:
            _write_run(
                item, k, reweigh(item.run_path(k, ".parquet"), item.reward, services.normalize_stats()), services
            )
    todo = [k for k in todo if k not in reweighed]
    if reweighed:
        services.log(
            f"evaluate {item.model.name}: {len(reweighed)} run(s) re-weighed (only reward.terms' weights changed)"
        )
    if not todo:
        return
    services.log(f"evaluate {item.model.name}: {item.runs} runs x {item.samples} samples")
    # KL against the original; for the original itself it is 0 by definition, with no second model.
    reference = services.reference_policy() if item.kl and not isinstance(item.model, Original) else None
    policy, policy_tokenizer = load_policy(
        item.model.ref,
        item.model.revision,
        services.device,
        services.dtype,
        item.sampling.max_length,
        trusts_code(item.model),
    )
    for k in todo:
        seed = item.seed + k
        df = sample_in_shards(
            policy,
            policy_tokenizer,
            services,
            item.samples,
            item.sampling,
            seed,
            item.run_path(k, ".parquet"),
            f"eval {item.model.name} run {k}",
            reference,
        )
        if df is None:  # not the main process: it sampled its shard, the main process measures the run
            continue
        metrics = _write_run(item, k, df, services, policy_tokenizer)
        kl = f", KL {metrics['kl_seq']:.2f}" if "kl_seq" in metrics else ""
        services.log(
            f"  {item.model.name} run {k}: reward {metrics['reward_mean']:.3f}, diversity "
            f"{metrics['diversity']:.3f}, positive rate {metrics['positive_rate']:.3f}{kl} "
            f"({len(df) / df.attrs['seconds']:.0f} samples/s)"
        )
    del policy
    release_memory()


def _only_weights_changed(item: Evaluation, k: int) -> bool:
    """Whether run k's stored texts were scored with the same terms, only weighed otherwise."""
    return bool(item.reward.terms) and reusable_texts(
        item.run_path(k, ".json"), "texts_key", item.run_texts_key(k), item.run_path(k, ".parquet")
    )


def _write_run(item: Evaluation, k: int, df, services: Services, tokenizer=None) -> dict:
    """run-<k>.json for run k's texts `df` (written last: it holds the run's key); returns its metrics."""
    stored = read_json(item.run_path(k, ".json")) or {}
    tokenizer = tokenizer or services.policy_tokenizer(item.model.ref, item.model.revision)
    metrics = run_metrics(df, tokenizer, item.reward_thresholds)
    if item.kl and "logp" not in df.columns:  # the original: KL 0 by definition
        metrics.update(kl_seq=0.0, kl_token=0.0)
    run_info = dict(
        key=item.run_key(k),
        texts_key=item.run_texts_key(k),
        model=item.model.name,
        run=k,
        seed=item.seed + k,
        samples=len(df),
        seconds=round(df.attrs["seconds"], 2) if "seconds" in df.attrs else stored.get("seconds"),
        phase_seconds=df.attrs.get("phase_seconds", stored.get("phase_seconds")),
        world_size=services.ranks.count,
    )
    assert tuple(run_info) == RUN_INFO
    write_json(item.run_path(k, ".json"), {**run_info, **metrics})
    return metrics


def stored_runs(item, what: str) -> list[dict]:
    """Every run-<k>.json of an item kept run by run under its own key (an Evaluation, a BestOfN, a
    TextScores), as stored; EvaluationMissing, naming `what`, for a missing or stale run."""
    out = []
    for k in range(item.runs):
        stored = read_json(item.run_path(k, ".json"))
        if stored is None or stored.get("key") != item.run_key(k):
            raise EvaluationMissing(f"{what}, run {k}, is missing or stale; run `prefalign evaluate` first")
        out.append(stored)
    return out


def run_results(item: Evaluation) -> list[dict]:
    """The metrics of every run of `item`, as stored (raises EvaluationMissing for a missing or stale run)."""
    stored = stored_runs(item, f"evaluation of {item.model.name}")
    return [{name: value for name, value in run.items() if name not in RUN_INFO} for run in stored]


class EvaluationMissing(PrefalignError, RuntimeError):
    """The report was asked for before the evaluations it reads were finished."""
