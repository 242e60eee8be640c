"""Grid models trained side by side (`train.side_by_side`): each in a fresh worker process, on the
run's device or spread round-robin over the machine's GPUs, each worker seeing only its GPU.

A worker loads its own models and writes its outputs atomically, exactly as a serial run would;
the runner hands it the models that do not read each other (runner.train_models).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import torch

from prefalign.pipeline.distributed import exit_with_parent, single_process_environment
from prefalign.pipeline.items import Item
from prefalign.pipeline.logs import process_tag, quiet_libraries
from prefalign.pipeline.services import Services
from prefalign.training.trackers import Tracking


def worker_devices(device_type: str, device_index: int | None, count: int, gpus: int) -> list[int | None]:
    """The device index for each of `count` side-by-side models: round-robin over the machine's
    `gpus` GPUs when the run's device is CUDA without an index, else the run's own device."""
    if device_type == "cuda" and device_index is None and gpus > 1:
        return [i % gpus for i in range(count)]
    return [device_index] * count


def train_side_by_side(models: list[Item], stages: dict, services: Services, workers: int, spread: bool) -> None:
    """Train `models` (each by its stage function in `stages`, keyed by item type), `workers` at a
    time, each in a fresh process: on the run's device, or, with
    `spread`, over every GPU of the machine when the run's device is plain `cuda`.

    Each worker loads its own models and writes its outputs atomically, exactly as a serial run
    would; the first failure is raised here once the running ones finish (Ctrl-C stops them all:
    they share the terminal's process group).
    """
    workers = min(workers, len(models))
    device = services.device
    gpus = torch.cuda.device_count() if device.type == "cuda" and spread else 0
    indices = worker_devices(device.type, device.index, len(models), gpus)
    where = f"{gpus} GPUs" if len(set(indices)) > 1 else str(device)
    services.log(f"train {len(models)} model(s) side by side, {workers} at a time on {where}")
    # CPU threads shared out between workers, so they do not oversubscribe the cores.
    threads = max(1, torch.get_num_threads() // workers)
    # One pool per GPU, whose workers see only that GPU (a single-process Trainer takes cuda:0, and
    # spreads over every GPU it sees with DataParallel); the workers share out `workers`.
    # (None: the CPU, or the one GPU of a plain `cuda` run, where there is nothing to hide.)
    gpus_used = list(dict.fromkeys(indices))
    per_pool = max(1, workers // len(gpus_used))
    with contextlib.ExitStack() as stack:
        pools = {
            i: stack.enter_context(
                ProcessPoolExecutor(
                    per_pool, mp_context=multiprocessing.get_context("spawn"), initializer=start_worker, initargs=(i,)
                )
            )
            for i in gpus_used
        }
        futures = [
            pools[index].submit(
                _train_in_worker,
                stages[type(model)],
                model,
                device.type,
                threads,
                services.reward,
                services.original,
                services.launch,
                services.tracking,
                process_tag().strip(),
            )
            for model, index in zip(models, indices)
        ]
        try:
            for future in futures:
                future.result()
        except BaseException:
            for pool in pools.values():  # the running ones finish; the waiting ones never start
                pool.shutdown(wait=True, cancel_futures=True)
            raise


def visible_gpus(index: int | None, visible: str | None) -> str | None:
    """CUDA_VISIBLE_DEVICES for a worker that is to use GPU `index` of the ones this process sees
    (`visible`: this process's CUDA_VISIBLE_DEVICES, None when all are visible); None: leave it."""
    if index is None:
        return None
    return visible.split(",")[index].strip() if visible else str(index)


def start_worker(gpu: int | None) -> None:
    """A training worker's start, before torch touches CUDA: no launcher variables, only its GPU
    visible, and an end of its own if the run's process dies (exit_with_parent)."""
    exit_with_parent()
    single_process_environment()
    shown = visible_gpus(gpu, os.environ.get("CUDA_VISIBLE_DEVICES"))
    if shown is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = shown


def _train_in_worker(
    stage, model: Item, device_type: str, threads: int, reward, original, launch: dict, tracking: Tracking, tag: str
) -> None:
    from prefalign.models.device import use_attention_kernels

    if tag:
        os.environ["PREFALIGN_PROCESS"] = tag  # its log lines name the process that started it
    quiet_libraries()  # a spawned process starts with the libraries' default warnings and progress bars
    torch.set_num_threads(threads)
    # A CUDA worker sees one GPU (start_worker): plain `cuda` is it.
    device = torch.device(device_type)
    use_attention_kernels(device)
    stage(model, Services(device, reward, original, launch=launch, tracking=tracking))
