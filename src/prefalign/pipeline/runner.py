"""Walk a config's plan: take the run lock, skip what is on disk, call one stage function per item.

Order of a run, and why:
1. lock the run directory (two runs in one directory would delete each other's temporary files;
   the OS drops the lock when its holder dies, so a killed run never leaves a stale lock);
2. remove temporary outputs of killed runs (safe only under the lock);
3. for each item of the plan up to the stage asked for, in plan order (inputs first): skip it when
   its outputs hold its key, else call `STAGES[type(item)](item, services)`. Consecutive models
   that do not read each other (the grid) are trained as one batch: one after another, or
   `train.side_by_side` at a time in worker processes;
4. only then write the provenance (config.yaml, models.json): a run that fails leaves the
   directory's provenance describing the outputs of the last run that succeeded.

A run launched as several processes (`accelerate launch`, `torchrun`, `--num-processes`) does
the same in each; the main process (rank 0) holds the lock, and `_walk` says who makes what.

    prefalign run CONFIG         # every item
    prefalign train CONFIG       # items up to the train stage
    prefalign plan CONFIG        # what a run would do, without doing it
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import time
from pathlib import Path

import torch

from prefalign.config.schema import Config
from prefalign.errors import PrefalignError
from prefalign.pipeline.distributed import Ranks, join
from prefalign.pipeline.evidence_items import BestOfN, TextScores, TrajectoryScores
from prefalign.pipeline.items import (
    TRAINED,
    DpoModel,
    Evaluation,
    Item,
    IterativeRound,
    Pairs,
    Report,
    RlooModel,
    Samples,
)
from prefalign.pipeline.logs import log, quiet
from prefalign.pipeline.plan import STAGE_NAMES, PlanError, check_pairs_on_disk, sources, stage_of
from prefalign.pipeline.plan import plan as make_plan
from prefalign.pipeline.provenance import (
    check_replacements,
    provenance_is_current,
    write_provenance,
)
from prefalign.pipeline.services import Services
from prefalign.pipeline.side_by_side import train_side_by_side
from prefalign.pipeline.store import is_done, remove_stale
from prefalign.stages.best_of_n import best_of_n
from prefalign.stages.evaluate import evaluate
from prefalign.stages.judge import score_stage, trajectory_stage
from prefalign.stages.pairs import make_pairs
from prefalign.stages.report import write_report
from prefalign.stages.sample import sample
from prefalign.stages.train_dpo import train_dpo
from prefalign.stages.train_rloo import train_rloo_model
from prefalign.training.dpo_settings import per_device_batch
from prefalign.training.trackers import Tracking

# The whole dispatch: each kind of item and the function that makes it.
STAGES = {
    Samples: sample,
    Pairs: make_pairs,
    DpoModel: train_dpo,
    IterativeRound: train_dpo,
    RlooModel: train_rloo_model,
    Evaluation: evaluate,
    BestOfN: best_of_n,
    TextScores: score_stage,
    TrajectoryScores: trajectory_stage,
    Report: write_report,
}


class RunLocked(PrefalignError):
    """Another prefalign process is working in the same run directory."""


class RunDirError(PrefalignError):
    """The run directory cannot be created (a file is in the way, no permission, ...)."""

    exit_code = 2


def is_current(item: Item) -> bool:
    """Whether every output of `item` is on disk with the item's key."""
    if isinstance(item, Evaluation):  # its outputs are runs, each with its own key
        return all(item.run_done(k) for k in range(item.runs))
    return all(is_done(meta, key) for meta, key in item.markers()) and item.path.exists()


def select(items: list[Item], until: str) -> list[Item]:
    """The items a stage command brings up to date: those of that stage and the ones before it."""
    last = STAGE_NAMES.index(until)
    return [item for item in items if STAGE_NAMES.index(stage_of(item)) <= last]


def run(cfg: Config, until: str = "report", update: bool = False) -> list[Item]:
    """Bring every item up to stage `until` up to date, in plan order; returns those items.

    A run never silently overwrites another config's outputs: unless `update`, it first refuses
    (check_replacements). Every process of a multi-process launch calls this with the same config
    and walks the same plan; see `_walk` for who does what.
    """
    from prefalign.models.device import pick_device

    # The plan first: a config whose items clash fails before anything is written.
    original, reward = sources(cfg)
    items = select(make_plan(cfg, original, reward), until)
    root = cfg.run_path
    if not update:
        check_replacements(cfg, items)
    check_pairs_on_disk(items)  # pairs that the samples already made cannot give: before any work too
    if root.is_dir() and all(is_current(item) for item in items) and provenance_is_current(cfg):
        # Nothing to do, so nothing is written (not even the lock): a finished run can be on a
        # read-only disk and `prefalign report` still answers.
        log(f"{until}: all {len(items)} items up to date in {root}; nothing written")
        return items
    device = pick_device(cfg.device)
    ranks = join(device.type)
    if ranks.count > 1:
        check_parallel(cfg, items, ranks.count)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", ranks.local_index)  # one GPU per process
    tracking = Tracking(tuple(cfg.train.report_to), root / "logs", cfg.name)
    services = Services(
        device,
        reward,
        original,
        cfg.reward.batch_size,
        log=log if ranks.main else quiet,
        ranks=ranks,
        tracking=tracking,
    )
    with run_directory(root, ranks):
        start = time.time()
        _walk(items, cfg, services)
        ranks.wait()  # every process's outputs are written
        if ranks.main:
            write_provenance(cfg, items)
            log(f"{until}: finished in {time.time() - start:.1f}s with {ranks.count} process(es); outputs in {root}")
    return items


@contextlib.contextmanager
def run_directory(root: Path, ranks: Ranks):
    """Hold the run directory for the whole run (the main process locks it and clears what killed
    runs left; the other processes start once it has)."""
    lock = None
    if ranks.main:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(
                f"run_dir {str(root)!r} cannot be used as the run directory ({e.strerror}); set "
                "`run_dir` to a directory you can write, or remove what is in the way"
            ) from None
        lock = open(root / ".lock", "a")  # "a": opening must not touch the file
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise RunLocked(f"another prefalign process is running in {root}") from None
        remove_stale(root)
    try:
        ranks.wait()
        yield
    finally:
        if lock is not None:
            lock.close()


# Items only the main process makes; the others wait for them.
MAIN_ONLY = (Pairs, TextScores, TrajectoryScores, Report)


def _walk(items: list[Item], cfg: Config, services: Services) -> None:
    """Make every item not already on disk, in plan order, in every process alike.

    Who makes what: samples and evaluations, every process (each its own shard); pairs and the
    report, the main process; models, by batches of consecutive independent models (the grid): in
    `grid` mode each process trains whole models of the batch, in `data` mode all of them train each
    model together (DDP). Whether an item is on disk is agreed by all the processes (`all_true`), so
    they take the same branches and meet at the same points.
    """
    ranks = services.ranks
    i = 0
    while i < len(items):
        item = items[i]
        if isinstance(item, TRAINED):
            batch = independent_models(items, i)
            i += len(batch)
            todo = [m for m in batch if not ranks.all_true(is_current(m))]
            for m in batch:
                if m not in todo:
                    services.log(f"{m.name}: up to date")
            if todo:
                train_models(todo, cfg, services)
                ranks.wait()
            continue
        i += 1
        if ranks.all_true(is_current(item)):
            services.log(f"{item.name}: up to date")
        elif isinstance(item, MAIN_ONLY):
            if ranks.main:
                STAGES[type(item)](item, services)
            ranks.wait()
        else:
            STAGES[type(item)](item, services)


def independent_models(items: list[Item], start: int) -> list[Item]:
    """The run of consecutive trained models from `items[start]` on, none reading another (the grid
    models; an iterative round stands alone, as it reads the round before)."""
    batch: list[Item] = []
    for item in items[start:]:
        if not isinstance(item, TRAINED) or any(i is b for i in item.inputs for b in batch):
            break
        batch.append(item)
    return batch


def parallel_mode(setting: str | None, models: int, processes: int) -> str:
    """`grid` or `data` for `models` models over `processes` processes: the setting, else `grid`
    when every process gets a whole model, else `data`."""
    if setting:
        return setting
    return "grid" if models >= processes else "data"


def check_parallel(cfg: Config, items: list[Item], processes: int) -> None:
    """Refuse, before any work, what the processes cannot train: a `data`-mode batch that does not
    divide over them (data mode keeps the recipe's batch: each process takes batch / processes pairs
    per step), or LoRA with weights sharded by FSDP / DeepSpeed (the merged model cannot be written)."""
    sharded = [
        v for v in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED") if os.environ.get(v, "").lower() == "true"
    ]
    if cfg.train.lora and sharded:
        raise PlanError(
            f"train.lora with {sharded[0].split('_')[-1]} from the accelerate config: the adapters cannot "
            "be merged into a model for evaluation there; train LoRA with a DDP config (multi_gpu.yaml)"
        )
    if cfg.train.parallel != "data":
        return
    for item in items:
        if isinstance(item, DpoModel):
            batch = per_device_batch(item.recipe, item.overrides)
            if batch % processes:
                raise PlanError(
                    f"train.parallel: data splits each batch of {batch} pairs over the {processes} "
                    f"processes, which does not divide it; use a batch size "
                    f"(train.dpo.per_device_train_batch_size) divisible by {processes}, another number of "
                    "processes, or `train.parallel: grid`"
                )


def train_models(models: list[Item], cfg: Config, services: Services) -> None:
    """Train independent models: one after another in this process, side by side in worker
    processes (`train.side_by_side`), or over the run's processes (see `_walk`)."""
    ranks = services.ranks
    side_by_side = cfg.train.side_by_side
    if ranks.count == 1:
        if side_by_side > 1 and len(models) > 1:
            train_side_by_side(models, STAGES, services, side_by_side, spread=True)
        else:
            for model in models:
                STAGES[type(model)](model, services)
        return
    dpo = [m for m in models if isinstance(m, DpoModel)]
    mode = parallel_mode(cfg.train.parallel, len(models), ranks.count)
    if mode == "data" and not all(per_device_batch(m.recipe, m.overrides) % ranks.count == 0 for m in dpo):
        mode = "grid"  # `auto` only: an explicit `data` was checked before the run
    if mode == "data":
        services.log(f"train {len(dpo)} model(s) with all {ranks.count} processes each (parallel: data)")
        together = dataclasses.replace(services, launch={"world_size": ranks.count, "parallel": "data"})
        for model in dpo:
            STAGES[type(model)](model, together)
        models = [m for m in models if not isinstance(m, DpoModel)]  # RLOO models train whole, one per process
    mine = models[ranks.index :: ranks.count]
    if mine:
        log(f"train {len(mine)} of {len(models)} models in this process (parallel: grid)")
        # In worker processes that see no launcher: the Trainer would otherwise join the others' group.
        launch = {"world_size": ranks.count, "parallel": "grid", "process": ranks.index}
        train_side_by_side(mine, STAGES, dataclasses.replace(services, launch=launch), side_by_side, spread=False)


def describe(item: Item) -> str:
    """One line for `prefalign plan`: the item and what it reads."""
    if isinstance(item, Samples):
        return f"{item.count} texts from {item.policy.name}, seed {item.seed}"
    if isinstance(item, Pairs):
        return f"{item.count} pairs, seed {item.seed}" + "".join(f", {k} {v}" for k, v in item.rule.items())
    if isinstance(item, IterativeRound):
        return f"round {item.round} from {item.start.name}, on {item.pairs.name}"
    if isinstance(item, DpoModel):
        return f"{item.loss_label}, beta {item.beta:g}, recipe {item.recipe}, on {item.pairs.name}"
    if isinstance(item, RlooModel):
        return f"RLOO, kl_coef {item.kl_coef:g}, {item.steps} steps"
    if isinstance(item, Evaluation):
        return f"{item.runs} runs x {item.samples} texts"
    if isinstance(item, BestOfN):
        return f"N in {list(item.ladder)}, {item.runs} runs x {item.chosen} texts, pools of {item.draws} draws"
    if isinstance(item, TextScores):
        return f"{item.scorer.kind} {item.scorer.ref}, {item.runs} runs"
    if isinstance(item, TrajectoryScores):
        return f"{item.scorer.kind} {item.scorer.ref}, the points of {item.model.name}'s training curve"
    return f"results of {len(item.evaluations)} models, the original included"


def plan_table(cfg: Config) -> str:
    """The plan as `prefalign plan` prints it: one line per item (stage, state, key, type, output, what)."""
    items = make_plan(cfg)
    check_pairs_on_disk(items)
    root = cfg.run_path
    done = [is_current(item) for item in items]
    lines = [
        f"plan of {cfg.name!r}: {len(items)} items, {sum(done)} up to date, run directory {root}",
        "",
        f"{'stage':<9} {'state':<5} {'key':<16} {'item':<14} {'output (in the run directory)':<52} what",
    ]
    for item, current in zip(items, done):
        output = item.path.relative_to(root) if item.path.is_relative_to(root) else item.path
        state = "done" if current else "todo"
        if not current and isinstance(item, Evaluation):  # evaluations resume run by run: how many are done
            state = f"{sum(item.run_done(k) for k in range(item.runs))}/{item.runs}"
        lines.append(
            f"{stage_of(item):<9} {state:<5} {item.key} {type(item).__name__:<14} {str(output):<52} {describe(item)}"
        )
    return "\n".join(lines)
