"""Walk a config's plan: take the run lock, skip what is on disk, call one stage function per item.

Order of a run, and why:
1. lock the run directory (two processes in one directory would delete each other's temporary
   files; the OS drops the lock when its holder dies, so a killed run never leaves a stale lock);
2. remove temporary outputs of killed runs (safe only under the lock);
3. for each item of the plan up to the stage asked for, in plan order (inputs first): skip it when
   its outputs hold its key, else call `STAGES[type(item)](item, services)`. With
   `train.side_by_side: N`, reaching the first grid model to train starts every grid model whose
   pairs are ready, N at a time in worker processes; the loop then finds them done;
4. only then write the provenance (config.yaml, models.json): a run that fails leaves the
   directory's provenance describing the outputs of the last run that succeeded.

    prefalign run CONFIG         # every item
    prefalign train CONFIG       # items up to the train stage
    prefalign plan CONFIG        # what a run would do, without doing it
"""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml

from prefalign.config import Config
from prefalign.plan import STAGE_NAMES, DpoModel, Evaluation, Item, IterativeRound, Pairs, Report, RlooModel, Samples
from prefalign.plan import plan as make_plan
from prefalign.plan import sources, stage_of
from prefalign.services import Services, log, model_info
from prefalign.stages.evaluate import evaluate
from prefalign.stages.pairs import make_pairs
from prefalign.stages.report import write_report
from prefalign.stages.sample import sample
from prefalign.stages.train_dpo import train_dpo
from prefalign.stages.train_rloo import train_rloo_model
from prefalign.store import is_done, read_json, remove_stale, write_json, write_text

# The whole dispatch: each kind of item and the function that makes it.
STAGES = {
    Samples: sample,
    Pairs: make_pairs,
    DpoModel: train_dpo,
    IterativeRound: train_dpo,
    RlooModel: train_rloo_model,
    Evaluation: evaluate,
    Report: write_report,
}


class RunLocked(Exception):
    """Another prefalign process is working in the same run directory."""


class RunDirError(Exception):
    """The run directory cannot be created (a file is in the way, no permission, ...)."""


def is_current(item: Item) -> bool:
    """Whether every output of `item` is on disk with the item's key."""
    return all(is_done(meta, key) for meta, key in item.markers()) and item.path.exists()


def select(items: list[Item], until: str) -> list[Item]:
    """The items a stage command brings up to date: those of that stage and the ones before it."""
    last = STAGE_NAMES.index(until)
    return [item for item in items if STAGE_NAMES.index(stage_of(item)) <= last]


def write_provenance(cfg: Config) -> None:
    """config.yaml (as resolved) and models.json (which models, and their quality when known)."""
    root = cfg.run_path
    write_text(root / "config.yaml", yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    write_json(root / "models.json", model_info(cfg))


def provenance_is_current(cfg: Config) -> bool:
    """Whether config.yaml and models.json already say what `write_provenance(cfg)` would write."""
    root = cfg.run_path
    config_file = root / "config.yaml"
    if not config_file.is_file() or config_file.read_text() != yaml.safe_dump(cfg.model_dump(), sort_keys=False):
        return False
    return read_json(root / "models.json") == json.loads(json.dumps(model_info(cfg), default=str))


def run(cfg: Config, until: str = "report") -> list[Item]:
    """Bring every item up to stage `until` up to date, in plan order; returns those items."""
    from prefalign.models.loading import pick_device

    # The plan first: a config whose items clash fails before anything is written.
    original, reward = sources(cfg)
    items = select(make_plan(cfg, original, reward), until)
    root = cfg.run_path
    if root.is_dir() and all(is_current(item) for item in items) and provenance_is_current(cfg):
        # Nothing to do, so nothing is written (not even the lock): a finished run can be on a
        # read-only disk and `prefalign report` still answers.
        log(f"{until}: all {len(items)} items up to date in {root}; nothing written")
        return items
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"run_dir {str(root)!r} cannot be used as the run directory ({e.strerror}); set "
                          "`run_dir` to a directory you can write, or remove what is in the way") from None
    with open(root / ".lock", "a") as lock:  # "a": opening must not touch the file
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLocked(f"another prefalign process is running in {root}") from None
        remove_stale(root)
        services = Services(pick_device(cfg.device), reward, original, cfg.reward.batch_size)
        start = time.time()
        for item in items:
            if type(item) is DpoModel and cfg.train.side_by_side > 1 and not is_current(item):
                ready = [m for m in items if type(m) is DpoModel and not is_current(m) and is_current(m.pairs)]
                train_side_by_side(ready, services, cfg.train.side_by_side)
            if is_current(item):
                log(f"{item.name}: up to date")
                continue
            STAGES[type(item)](item, services)
        write_provenance(cfg)
        log(f"{until}: finished in {time.time() - start:.1f}s; outputs in {root}")
    return items


def worker_devices(device_type: str, device_index: int | None, count: int, gpus: int) -> list[int | None]:
    """The device index for each of `count` side-by-side models: round-robin over the machine's
    `gpus` GPUs when the run's device is CUDA without an index, else the run's own device."""
    if device_type == "cuda" and device_index is None and gpus > 1:
        return [i % gpus for i in range(count)]
    return [device_index] * count


def train_side_by_side(models: list[DpoModel], services: Services, workers: int) -> None:
    """Train `models`, `workers` at a time, each in a fresh process: on the run's device, or spread
    over every GPU of the machine when the run's device is plain `cuda` (`device: auto` / `cuda`).

    Each worker loads its own models and writes its outputs atomically, exactly as a serial run
    would; the first failure is raised here once the running ones finish (Ctrl-C stops them all:
    they share the terminal's process group).
    """
    import torch

    workers = min(workers, len(models))
    device = services.device
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    indices = worker_devices(device.type, device.index, len(models), gpus)
    where = f"{gpus} GPUs" if len(set(indices)) > 1 else str(device)
    services.log(f"train {len(models)} models side by side, {workers} at a time on {where}")
    # CPU threads shared out between workers, so they do not oversubscribe the cores.
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_train_in_worker, model, device.type, index, threads)
                   for model, index in zip(models, indices)]  # fmt: skip
        try:
            for future in futures:
                future.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # the running ones finish; the waiting ones never start
            raise


def _train_in_worker(model: DpoModel, device_type: str, device_index: int | None, threads: int) -> None:
    import torch

    from prefalign.cli import _quiet_libraries

    _quiet_libraries()  # a spawned process starts with the libraries' default warnings and progress bars
    torch.set_num_threads(threads)
    device = torch.device(device_type, device_index) if device_index is not None else torch.device(device_type)
    train_dpo(model, Services(device, reward=None, original=None))


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
    return f"results of {len(item.evaluations)} models, the original included"


def plan_table(cfg: Config) -> str:
    """The plan as `prefalign plan` prints it: one line per item (stage, state, key, type, output, what)."""
    items = make_plan(cfg)
    root = cfg.run_path
    done = [is_current(item) for item in items]
    lines = [f"plan of {cfg.name!r}: {len(items)} items, {sum(done)} up to date, run directory {root}", "",
             f"{'stage':<9} {'state':<5} {'key':<16} {'item':<14} {'output (in the run directory)':<52} what"]  # fmt: skip
    for item, current in zip(items, done):
        output = item.path.relative_to(root) if item.path.is_relative_to(root) else item.path
        state = "done" if current else "todo"
        if not current and isinstance(item, Evaluation):  # evaluations resume run by run: how many are done
            state = f"{sum(is_done(meta, key) for meta, key in item.markers())}/{item.runs}"
        lines.append(f"{stage_of(item):<9} {state:<5} {item.key} {type(item).__name__:<14} "
                     f"{str(output):<52} {describe(item)}")  # fmt: skip
    return "\n".join(lines)
