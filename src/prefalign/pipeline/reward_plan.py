"""Resolve `reward.*` into the plan's RewardModel: defaults filled in, every model checked while planning."""

from __future__ import annotations

from prefalign.pipeline.items import samples_texts_key
from prefalign.pipeline.reward_model import RewardModel, Term


def resolve_reward(cfg, original_key: str) -> RewardModel:
    """cfg.reward as a RewardModel: reward.model (checked like every model while planning: a missing path,
    a wrong label, code it would run; ModelPathError, exit 2, naming the key) and each `reward.terms`
    entry with its defaults filled in (a classifier term: reward.model; fluency: policy.model)."""
    from prefalign.models.loading import identity
    from prefalign.models.saved import check_saved_model

    r = cfg.reward
    check_saved_model(
        r.model,
        "reward",
        positive_label=r.positive_label,
        single_logit=r.single_logit,
        trust_remote_code=r.trust_remote_code,
    )
    reward_identity = identity(r.model, r.revision, "reward")
    terms = tuple(_term(t, i, cfg, reward_identity) for i, t in enumerate(r.terms))
    first = next((t for t in terms if t.type == "classifier"), None)
    head = (
        (first.ref, first.revision, first.positive_label, first.identity, first.single_logit, first.trust_remote_code)
        if first
        else (r.model, r.revision, r.positive_label, reward_identity, r.single_logit, r.trust_remote_code)
    )
    reward = RewardModel(*head, terms=terms, normalize=r.normalize)
    if not r.normalize:
        return reward
    s = cfg.sampling
    stats_key = samples_texts_key(original_key, reward.scores_key, s, s.num_samples, s.seed)
    return RewardModel(
        *head, terms=terms, normalize=True, stats_path=cfg.run_path / "samples.meta.json", stats_key=stats_key
    )


def _term(t, i: int, cfg, reward_identity: str) -> Term:
    from prefalign.models.loading import identity
    from prefalign.models.saved import check_saved_model

    where = f"reward.terms[{i}].model"
    if t.type == "classifier":
        r = cfg.reward
        own = t.model is not None
        ref, revision = (t.model, t.revision) if own else (r.model, t.revision or r.revision)
        label = t.positive_label or (r.positive_label if not own else "POSITIVE")
        single = t.single_logit if t.single_logit is not None else (r.single_logit if not own else False)
        trust = t.trust_remote_code if t.trust_remote_code is not None else r.trust_remote_code
        check_saved_model(ref, "reward", key=where, positive_label=label, single_logit=single, trust_remote_code=trust)
        ident = identity(ref, revision, "reward", where) if own or revision != r.revision else reward_identity
        return Term(t.label, t.type, float(t.weight), ref, revision, ident, label, single, trust)
    if t.type == "fluency":
        p = cfg.policy
        ref, revision, trust = (
            (t.model, t.revision, t.trust_remote_code) if t.model else (p.model, p.revision, p.trust_remote_code)
        )
        check_saved_model(ref, "policy", key=where, trust_remote_code=trust)
        return Term(
            t.label,
            t.type,
            float(t.weight),
            ref,
            revision,
            identity(ref, revision, "policy", where),
            trust_remote_code=trust,
            empty=t.empty,
        )
    if t.type == "length":
        return Term(t.label, t.type, float(t.weight), target=t.target)
    return Term(t.label, t.type, float(t.weight))
