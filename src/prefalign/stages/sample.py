"""The `sample` stage: draw a `Samples` item's texts from its policy and score each one.

The policy is the original (the main samples every pair rule draws from) or, for an iterative
round, the previous round's model. Texts start from the BOS token, or from BOS + a corpus prompt
when `sampling.prompts` is set; the engine (engine/decoding.py) streams them with their rewards to
`samples.parquet`, and `samples.meta.json` (key, timing, reward summary) is written last. Run with:

    prefalign sample CONFIG
"""

from __future__ import annotations

from prefalign.engine.decoding import sample_and_score
from prefalign.models.loading import load_policy
from prefalign.plan import Samples
from prefalign.services import Services
from prefalign.store import write_json


def corpus_prompts_for(sampling, tokenizer, n: int, seed: int):
    """Per-row (token ids, text) prompts for n samples, or None when sampling starts from BOS alone."""
    if sampling.prompts is None:
        return None
    from prefalign.engine.prompts import corpus_prompts

    return corpus_prompts(sampling.prompts, tokenizer, n, seed)


def sample(item: Samples, services: Services) -> None:
    sampling = item.sampling
    services.log(f"{item.name}: {item.count} texts from {item.policy.ref} on {services.device}")
    policy, policy_tokenizer = load_policy(item.policy.ref, item.policy.revision, services.device, services.dtype,
                                           sampling.max_length)  # fmt: skip
    classifier = services.classifier()
    df = sample_and_score(policy, policy_tokenizer, classifier.model, classifier.tokenizer, classifier.positive_index,
                          item.count, sampling, item.seed, services.reward_batch_size, item.path, desc=item.name,
                          prompts=corpus_prompts_for(sampling, policy_tokenizer, item.count, item.seed))  # fmt: skip
    seconds = df.attrs["seconds"]
    write_json(item.meta, {
        "key": item.key, "samples": len(df), "seconds": round(seconds, 2),
        "samples_per_second": round(len(df) / seconds, 1), "reward_mean": float(df.reward.mean()),
        "positive_rate": float(df.is_positive.mean()),
    })  # fmt: skip
    services.log(f"{item.name}: done in {seconds:.1f}s ({len(df) / seconds:.0f} samples/s), mean reward "
                 f"{df.reward.mean():.3f}, positive rate {df.is_positive.mean():.3f}")  # fmt: skip
