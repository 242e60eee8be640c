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

import dataclasses
from pathlib import Path

from prefalign.config.schema import Config
from prefalign.engine.pair_rules import most_distinct_pairs
from prefalign.errors import CorpusError, PrefalignError
from prefalign.pipeline.evidence_plan import evidence_items
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
    sampler_settings,
    seed_suffix,
)
from prefalign.pipeline.reward_plan import resolve_reward
from prefalign.pipeline.trajectory import Trajectory

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
    already rule out; so is a prompt corpus's missing text column)."""
    from prefalign.data.corpus import check_text_column
    from prefalign.models.loading import identity
    from prefalign.models.saved import check_saved_model

    p, prompts = cfg.policy, cfg.sampling.prompts
    if prompts is not None:  # a text column the corpus lacks (its header, or its cached hub info, tells)
        check_text_column(prompts.corpus, prompts.text_column, prompts.subset)
    check_saved_model(p.model, "policy", max_length=cfg.sampling.max_length, trust_remote_code=p.trust_remote_code)
    original = Original(p.model, p.revision, identity(p.model, p.revision), p.trust_remote_code)
    return original, resolve_reward(cfg, original.key)


def plan(cfg: Config, original: Original | None = None, reward: RewardModel | None = None) -> list[Item]:
    """Every item of the experiment, each after the items it reads. Pure given the two sources
    (by default `sources(cfg)`)."""
    if original is None or reward is None:
        original, reward = sources(cfg)
    planner = _Planner(cfg, original, reward)
    # Repeats of one model sit next to each other (in results, tables and the training order).
    trained = planner.grid_models()
    chains = planner.iterative_chains()
    trained += [model for chain in chains for model in chain]  # round 1 is often a grid model: kept once
    trained += planner.rloo_models()
    evaluations = planner.evaluations([original, *{m.key: m for m in trained}.values()])
    evidence = [planner.add(x) for x in evidence_items(cfg, evaluations, reward)]
    planner.add(Report(tuple(evaluations), tuple(chains), cfg, cfg.run_path / "report.md", tuple(evidence)))
    items = list(planner.items.values())
    check_items(items, planner.main)
    # Stage by stage (all pairs before any training, as `prefalign pairs` stops there); a stable sort
    # keeps every item after its inputs, since an item's stage is never earlier than theirs.
    return sorted(items, key=lambda item: STAGE_NAMES.index(stage_of(item)))


class _Planner:
    """Builds one config's items, each once: an item asked for twice (e.g. by train.extra, or a
    grid model that is also round 1 of a chain) is planned once, by key."""

    def __init__(self, cfg: Config, original: Original, reward: RewardModel):
        self.cfg, self.original, self.reward = cfg, original, reward
        self.root, self.train, self.sampling = cfg.run_path, cfg.train, cfg.sampling
        self.items: dict[str, Item] = {}
        self.sampler: dict | None = None  # sampler_settings(sampling), once a trajectory needs it
        s = self.sampling
        self.main = self.add(Samples(original, reward, s, s.num_samples, s.seed, self.root / "samples.parquet"))

    def add(self, item):
        return self.items.setdefault(item.key, item)

    def pairs_of(self, samples: Samples, strategy: str, seed: int, path: Path) -> Pairs:
        pairs = self.cfg.pairs
        return self.add(Pairs(samples, strategy, pairs.rule(strategy), pairs.count, seed, path))

    def dpo(
        self,
        pairs: Pairs,
        start: Policy,
        loss,
        beta: float,
        recipe: str,
        path: Path,
        repeat: int,
        overrides: dict,
        cls=DpoModel,
        **chain,
    ) -> DpoModel:
        t = self.train
        lora = t.lora.model_dump() if t.lora else None
        model = cls(
            pairs,
            start,
            self.original,
            loss,
            beta,
            recipe,
            overrides,
            t.seed + repeat,
            t.slic_sft_weight,
            t.precision,
            path,
            checkpoint_steps=t.checkpoint_steps,
            lora=lora,
            repeat=repeat,
            **chain,
        )
        return self.add(self.traced(model))

    def grid_model(self, strategy: str, loss, beta: float, recipe: str, repeat: int, overrides: dict) -> DpoModel:
        pairs = self.pairs_of(self.main, strategy, self.cfg.pairs.seed, self.root / "pairs" / f"{strategy}.parquet")
        name = dpo_name(strategy, loss, beta, recipe) + seed_suffix(self.train.seed + repeat, repeat)
        return self.dpo(pairs, self.original, loss, beta, recipe, self.root / "models" / name, repeat, overrides)

    def grid_models(self) -> list[DpoModel]:
        """pairs.strategies x train.losses x train.betas, then train.extra, each train.repeats times."""
        t, strategies = self.train, self.cfg.pairs.strategies
        points = [(strategy, loss, beta, t.recipe) for strategy in strategies for loss in t.losses for beta in t.betas]
        points += [(x.strategy, x.loss, x.beta, x.recipe or t.recipe) for x in t.extra]
        return [self.grid_model(*point, repeat, t.dpo) for point in points for repeat in range(t.repeats)]

    def iterative_chains(self) -> list[tuple[DpoModel, ...]]:
        """One chain per iterative loss x beta x repeat: its grid model (round 1), then rounds 2..R."""
        it, t = self.cfg.iterative, self.train
        if not it.rounds:
            return []
        recipe, overrides = it.recipe or t.recipe, {**t.dpo, **it.dpo}
        growth = f"-growth{it.beta_growth:g}" if it.beta_growth != 1 else ""
        chains = []
        for loss in it.losses:
            for beta in it.betas:
                name = "iter-" + dpo_name(it.strategy, loss, beta, recipe) + growth
                for repeat in range(t.repeats):
                    first = self.grid_model(it.strategy, loss, beta, recipe, repeat, overrides)
                    chains.append(self.chain(first, name, loss, beta, recipe, repeat, overrides))
        return chains

    def chain(
        self, first: DpoModel, name: str, loss, beta: float, recipe: str, repeat: int, overrides: dict
    ) -> tuple[DpoModel, ...]:
        """Round r samples from round r-1's model, pairs those samples and trains from its weights."""
        it, s = self.cfg.iterative, self.sampling
        suffix = seed_suffix(self.train.seed + repeat, repeat)
        chain = [first]
        for r in range(2, it.rounds + 1):
            parent, folder = chain[-1], self.root / "iterative" / (name + suffix) / f"round-{r}"
            count = it.samples or s.num_samples
            samples = self.add(Samples(parent, self.reward, s, count, s.seed + r, folder / "samples.parquet"))
            # Every round draws its own pairs: the pair seed moves with the round.
            pairs = self.pairs_of(samples, it.strategy, self.cfg.pairs.seed + r - 1, folder / "pairs.parquet")
            model_dir = self.root / "models" / f"{name}-r{r}{suffix}"
            round_beta = round(beta * it.beta_growth ** (r - 1), 6)  # 6 digits: 0.1 x 1.5^2 is 0.225
            chain.append(
                self.dpo(
                    pairs,
                    parent,
                    loss,
                    round_beta,
                    recipe,
                    model_dir,
                    repeat,
                    overrides,
                    IterativeRound,
                    chain=name,
                    round=r,
                )
            )
        return tuple(chain)

    def traced(self, model):
        """`model` with its trajectory when evaluate.during_training is set. An `every` above the
        optimizer steps of its training (a config shrunk for a quick try) leaves the curve its first and
        last points."""
        during = self.cfg.evaluate.during_training
        if during is None:
            return model
        if self.sampler is None:
            self.sampler = sampler_settings(self.sampling)
        path = self.root / "eval" / model.name / "trajectory.csv"
        trajectory = Trajectory(during.every, during.samples, during.seed, self.sampling, self.sampler, path)
        return dataclasses.replace(model, trajectory=trajectory)

    def rloo_models(self) -> list[RlooModel]:
        online, t = self.cfg.online, self.train
        models = []
        for kl_coef in online.kl_coefs:
            for repeat in range(t.repeats):
                seed = t.seed + repeat
                path = self.root / "models" / (f"rloo-kl{kl_coef:g}" + seed_suffix(seed, repeat))
                model = RlooModel(
                    self.original, self.reward, kl_coef, online.steps, online.rloo, self.sampling, seed, path, repeat
                )
                models.append(self.add(self.traced(model)))
        return models

    def evaluations(self, models: list[Policy]) -> list[Evaluation]:
        e = self.cfg.evaluate
        return [
            self.add(
                Evaluation(
                    model,
                    self.reward,
                    self.original,
                    self.sampling,
                    e.runs,
                    e.samples,
                    e.seed,
                    e.kl,
                    tuple(e.reward_thresholds),
                    self.root / "eval" / model.name,
                )
            )
            for model in models
        ]


def check_items(items: list[Item], main: Samples) -> None:
    """Refuse a plan whose pairs the samples cannot give, or two different items with one output path."""
    sizes: dict = {}  # (count, seed) -> the prompt groups' sizes, cut once for every rule that needs them
    for item in items:
        if isinstance(item, Pairs):
            samples_key = "sampling.num_samples" if item.samples is main else "iterative.samples"
            check_pair_count(item, samples_key, sizes, main.policy)
    by_path: dict[Path, Item] = {}
    for item in items:
        other = by_path.setdefault(item.path, item)
        if other is not item:
            raise PlanError(
                f"{type(other).__name__} {other.name!r} and {type(item).__name__} {item.name!r} differ but "
                f"would both write {item.path}: give one of them another name (e.g. a loss mix's `name`)"
            )


def check_pair_count(
    pairs: Pairs, samples_key: str, sizes: dict | None = None, original: Original | None = None
) -> None:
    """Refuse, before sampling, a `pairs.count` that no rewards could give from the samples planned.
    `best_worst` with prompts counts the distinct prompts when they can be cut now (pair_bounds), as
    two draws of one prompt are one group: `original` is the policy whose tokenizer cuts them."""
    prompts = pairs.samples.sampling.prompts
    per_prompt = prompts.per_prompt if prompts else None
    n = pairs.samples.count
    groups = None
    if per_prompt and pairs.strategy == "best_worst" and original is not None:
        groups = _prompt_groups(pairs.samples, original, {} if sizes is None else sizes)
    most = most_distinct_pairs(n, pairs.strategy, pairs.rule.get("group_size", 4), per_prompt, groups)
    if pairs.count > most:
        if groups is not None:
            where = f" in {len(groups)} distinct prompts (of {-(-n // per_prompt)} drawn, {per_prompt} samples each)"
        elif per_prompt:
            where = f" in prompts of sampling.prompts.per_prompt={per_prompt}"
        else:
            where = (
                f" in blocks of pairs.group_size={pairs.rule['group_size']}" if pairs.strategy == "best_worst" else ""
            )
        raise PlanError(
            f"pairs.count {pairs.count} is more than the `{pairs.strategy}` rule can draw from {samples_key}="
            f"{n} samples{where}: at most {most} distinct pairs; "
            + (
                "pairs are formed within a prompt: raise sampling.prompts.per_prompt"
                if most == 0 and per_prompt
                else "lower pairs.count, or sample more from a corpus with more texts"
                if groups is not None
                else "lower pairs.count or sample more"
            )
        )


def _prompt_groups(samples: Samples, original: Original, sizes: dict) -> list[int] | None:
    from prefalign.pipeline.pair_bounds import prompt_group_sizes

    if (samples.count, samples.seed) not in sizes:
        try:
            sizes[samples.count, samples.seed] = prompt_group_sizes(samples, original)
        except CorpusError as e:
            raise PlanError(str(e)) from None
    return sizes[samples.count, samples.seed]


def check_pairs_on_disk(items: list[Item]) -> None:
    """Refuse, before any work, pairs that samples already on disk (current) cannot give: the pairs stage's
    rule function, run on their rewards now rather than after the stages before it."""
    from prefalign.pipeline.pair_bounds import pairs_on_disk_problem

    for item in items:
        problem = pairs_on_disk_problem(item) if isinstance(item, Pairs) else None
        if problem:
            raise PlanError(
                f"pairs.count {item.count} ({item.name}): the samples already in {item.samples.path} cannot give "
                f"them: {problem}"
            )


def stage_of(item: Item) -> str:
    """The CLI stage an item belongs to: its own, or a later one an input of it needs.

    Samples of an iterative round need a trained model, so they belong to `train`: `prefalign pairs`
    does not train anything to make them.
    """
    stages = [STAGE_NAMES.index(item.stage)] + [STAGE_NAMES.index(stage_of(i)) for i in item.inputs if i.stage]
    return STAGE_NAMES[max(stages)]
