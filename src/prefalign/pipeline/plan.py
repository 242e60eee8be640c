"""The experiment as data: every output a config asks for, as typed work items (items.py) in
dependency order.

`plan(cfg)` lists the items; the runner (runner.py) walks them and calls one stage function per
item type. The DPO grid is pairs.strategies x train.losses x train.betas plus train.extra, all
trained from the original policy on the main samples. An iterative chain is the grid model of its
settings (round 1) followed by rounds 2..R; round r samples from round r-1's model, pairs those
samples and trains from round r-1's weights, with the original as reference. Show a config's plan
with:

    prefalign plan CONFIG
"""

from __future__ import annotations

from pathlib import Path

from prefalign.config.schema import Config
from prefalign.engine.pair_rules import most_distinct_pairs
from prefalign.errors import PrefalignError
from prefalign.pipeline.items import (
    DpoModel,
    Evaluation,
    Item,
    IterativeRound,
    Original,
    Pairs,
    Policy,
    Report,
    RewardModel,
    RlooModel,
    Samples,
    dpo_name,
    seed_suffix,
)

STAGE_NAMES = ("sample", "pairs", "train", "evaluate", "report")


class PlanError(PrefalignError, ValueError):
    """A config whose items cannot all be made (two different items with one output path, more pairs
    than the samples allow)."""

    exit_code = 2
    lead = "invalid config: "


# ---- the plan ----------------------------------------------------------------------------------


def sources(cfg: Config) -> tuple[Original, RewardModel]:
    """The configured policy and reward model with their identities (for a local directory this
    reads its file listing and config.json: check_saved_model refuses, before any work, what its files
    already rule out)."""
    from prefalign.models.loading import identity
    from prefalign.models.saved import check_saved_model

    p, r = cfg.policy, cfg.reward
    check_saved_model(p.model, "policy", max_length=cfg.sampling.max_length, trust_remote_code=p.trust_remote_code)
    check_saved_model(
        r.model,
        "reward",
        positive_label=r.positive_label,
        single_logit=r.single_logit,
        trust_remote_code=r.trust_remote_code,
    )
    return (
        Original(p.model, p.revision, identity(p.model, p.revision), p.trust_remote_code),
        RewardModel(
            r.model,
            r.revision,
            r.positive_label,
            identity(r.model, r.revision, "reward"),
            r.single_logit,
            r.trust_remote_code,
        ),
    )


def plan(cfg: Config, original: Original | None = None, reward: RewardModel | None = None) -> list[Item]:
    """Every item of the experiment, each after the items it reads. Pure given the two sources
    (by default `sources(cfg)`)."""
    if original is None or reward is None:
        original, reward = sources(cfg)
    root, t, s = cfg.run_path, cfg.train, cfg.sampling
    items: dict[str, Item] = {}  # by key: an item asked for twice (e.g. by train.extra) is planned once

    def add(item):
        return items.setdefault(item.key, item)

    def pairs_of(samples: Samples, strategy: str, seed: int, path: Path) -> Pairs:
        return add(Pairs(samples, strategy, cfg.pairs.rule(strategy), cfg.pairs.count, seed, path))

    def dpo(
        pairs: Pairs,
        start: Policy,
        loss,
        beta: float,
        recipe: str,
        path: Path,
        repeat: int,
        cls=DpoModel,
        overrides=t.dpo,
        **chain,
    ):
        return add(
            cls(
                pairs,
                start,
                original,
                loss,
                beta,
                recipe,
                overrides,
                t.seed + repeat,
                t.slic_sft_weight,
                t.precision,
                path,
                checkpoint_steps=t.checkpoint_steps,
                lora=t.lora.model_dump() if t.lora else None,
                repeat=repeat,
                **chain,
            )
        )

    def grid_model(strategy: str, loss, beta: float, recipe: str, repeat: int, overrides=t.dpo) -> DpoModel:
        pairs = pairs_of(main, strategy, cfg.pairs.seed, root / "pairs" / f"{strategy}.parquet")
        name = dpo_name(strategy, loss, beta, recipe) + seed_suffix(t.seed + repeat, repeat)
        return dpo(pairs, original, loss, beta, recipe, root / "models" / name, repeat, overrides=overrides)

    main = add(Samples(original, reward, s, s.num_samples, s.seed, root / "samples.parquet"))
    points = [
        (strategy, loss, beta, t.recipe) for strategy in cfg.pairs.strategies for loss in t.losses for beta in t.betas
    ]
    points += [(x.strategy, x.loss, x.beta, x.recipe or t.recipe) for x in t.extra]
    # Repeats of one model sit next to each other (in results, tables and the training order).
    trained = [grid_model(*point, repeat) for point in points for repeat in range(t.repeats)]

    it = cfg.iterative
    chains = []
    for loss in it.losses if it.rounds else []:
        for beta in it.betas:
            recipe, overrides = it.recipe or t.recipe, {**t.dpo, **it.dpo}
            name = (
                "iter-"
                + dpo_name(it.strategy, loss, beta, recipe)
                + (f"-growth{it.beta_growth:g}" if it.beta_growth != 1 else "")
            )
            for repeat in range(t.repeats):
                suffix = seed_suffix(t.seed + repeat, repeat)
                chain = [grid_model(it.strategy, loss, beta, recipe, repeat, overrides)]
                for r in range(2, it.rounds + 1):
                    parent, folder = chain[-1], root / "iterative" / (name + suffix) / f"round-{r}"
                    samples = add(
                        Samples(parent, reward, s, it.samples or s.num_samples, s.seed + r, folder / "samples.parquet")
                    )
                    # Every round draws its own pairs: the pair seed moves with the round.
                    pairs = pairs_of(samples, it.strategy, cfg.pairs.seed + r - 1, folder / "pairs.parquet")
                    model_dir = root / "models" / f"{name}-r{r}{suffix}"
                    round_beta = round(beta * it.beta_growth ** (r - 1), 6)  # 6 digits: 0.1 x 1.5^2 is 0.225
                    chain.append(
                        dpo(
                            pairs,
                            parent,
                            loss,
                            round_beta,
                            recipe,
                            model_dir,
                            repeat,
                            IterativeRound,
                            overrides,
                            chain=name,
                            round=r,
                        )
                    )
                chains.append(tuple(chain))
                trained += chain
    trained += [
        add(
            RlooModel(
                original,
                reward,
                c,
                cfg.online.steps,
                cfg.online.rloo,
                s,
                t.seed + repeat,
                root / "models" / (f"rloo-kl{c:g}" + seed_suffix(t.seed + repeat, repeat)),
                repeat,
            )
        )
        for c in cfg.online.kl_coefs
        for repeat in range(t.repeats)
    ]

    e = cfg.evaluate
    evaluations = [
        add(
            Evaluation(
                model,
                reward,
                original,
                s,
                e.runs,
                e.samples,
                e.seed,
                e.kl,
                tuple(e.reward_thresholds),
                root / "eval" / model.name,
            )
        )
        for model in [original, *{m.key: m for m in trained}.values()]
    ]
    add(Report(tuple(evaluations), tuple(chains), cfg, root / "report.md"))
    for item in items.values():
        if isinstance(item, Pairs):
            check_pair_count(item, "sampling.num_samples" if item.samples is main else "iterative.samples")
    by_path: dict[Path, Item] = {}
    for item in items.values():
        other = by_path.setdefault(item.path, item)
        if other is not item:
            raise PlanError(
                f"{type(other).__name__} {other.name!r} and {type(item).__name__} {item.name!r} differ but "
                f"would both write {item.path}: give one of them another name (e.g. a loss mix's `name`)"
            )
    # Stage by stage (all pairs before any training, as `prefalign pairs` stops there); a stable sort
    # keeps every item after its inputs, since an item's stage is never earlier than theirs.
    return sorted(items.values(), key=lambda item: STAGE_NAMES.index(stage_of(item)))


def check_pair_count(pairs: Pairs, samples_key: str) -> None:
    """Refuse, before sampling, a `pairs.count` that no rewards could give from the samples planned."""
    prompts = pairs.samples.sampling.prompts
    per_prompt = prompts.per_prompt if prompts else None
    n = pairs.samples.count
    most = most_distinct_pairs(n, pairs.strategy, pairs.rule.get("group_size", 4), per_prompt)
    if pairs.count > most:
        groups = (
            f" in prompts of sampling.prompts.per_prompt={per_prompt}"
            if per_prompt
            else (
                f" in blocks of pairs.group_size={pairs.rule['group_size']}" if pairs.strategy == "best_worst" else ""
            )
        )
        raise PlanError(
            f"pairs.count {pairs.count} is more than the `{pairs.strategy}` rule can draw from {samples_key}="
            f"{n} samples{groups}: at most {most} distinct pairs; "
            + (
                "pairs are formed within a prompt: raise sampling.prompts.per_prompt"
                if most == 0 and per_prompt
                else "lower pairs.count or sample more"
            )
        )


def stage_of(item: Item) -> str:
    """The CLI stage an item belongs to: its own, or a later one an input of it needs.

    Samples of an iterative round need a trained model, so they belong to `train`: `prefalign pairs`
    does not train anything to make them.
    """
    stages = [STAGE_NAMES.index(item.stage)] + [STAGE_NAMES.index(stage_of(i)) for i in item.inputs if i.stage]
    return STAGE_NAMES[max(stages)]
