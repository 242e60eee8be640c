"""The built-in models' training loop (prefalign.models.builtin): AdamW with a one-cycle schedule over
shuffled epochs, a progress bar within each epoch (on stderr, on a terminal only, like prefalign's other
bars), the held-out evaluations after each, and a checkpoint after each epoch from which a rerun of an
interrupted build continues.

A checkpoint is a folder `<stage>-epoch-<k>` in the build's partial directory (build_cache.partial_dir),
written under a temporary name and renamed, so it is either whole or absent: the model's weights
(safetensors) and `state.pt`, tensors and plain values only (torch.save of state dicts, read back with
weights_only=True): the optimizer's and the scheduler's state, the batch order's generator, the torch,
numpy and python RNG states, and the epoch's report. Training continued from it is the computation an
uninterrupted training does, so a resumed build ends with the same weights, bit for bit.
"""

from __future__ import annotations

import math
import random
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from prefalign.pipeline.store import atomic_path

STATE_FILE, WEIGHTS_FILE = "state.pt", "model.safetensors"


def batches(n: int, batch: int, rng: torch.Generator) -> list[list[int]]:
    """One epoch's batches: the n indices shuffled by `rng`, cut into runs of `batch`."""
    order = torch.randperm(n, generator=rng).tolist()
    return [order[i : i + batch] for i in range(0, n, batch)]


def fit(
    model,
    step,
    report,
    n: int,
    batch: int,
    epochs: int,
    lr: float,
    seed: int,
    clip: float | None = None,
    log=None,
    checkpoints: Checkpoints | None = None,
    desc: str = "training",
):
    """Train `model` for `epochs` shuffled passes over n examples; `report(epoch, seconds)` runs after each.

    `step(indices)` returns the batch loss; the last `report` value is returned. `checkpoints`: where each
    epoch's checkpoint goes, and where the training continues from (its latest one) when there is one.
    `log`: told when the training continues, and, where no progress bar shows (off a terminal), the
    progress every tenth of a long training.
    """
    gen = torch.Generator().manual_seed(seed)
    per_epoch = math.ceil(n / batch)
    steps = epochs * per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    first, result = 0, None
    shape = {"n": n, "batch": batch, "epochs": epochs, "lr": lr, "seed": seed}  # a checkpoint of this training
    if checkpoints is not None:
        first, result = checkpoints.resume(model, opt, sched, gen, shape)
        if first and log is not None:
            log(f"{desc}: continuing after epoch {first}/{epochs}, from {checkpoints.folder}")
    model.train()
    start = time.time()
    for epoch in range(first, epochs):
        t0 = time.time()
        label = f"{desc} epoch {epoch + 1}/{epochs}"
        with tqdm(total=per_epoch, desc=label, unit="batch", leave=False, disable=None) as bar:
            for b, idx in enumerate(batches(n, batch, gen)):
                done = epoch * per_epoch + b + 1
                if bar.disable and log is not None and steps >= 500 and done % (steps // 10) == 0:
                    log(f"  {desc} step {done}/{steps} ({time.time() - start:.0f}s)")
                step(idx).backward()
                if clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
                bar.update()
        result = report(epoch, time.time() - t0)
        if checkpoints is not None:
            checkpoints.save(epoch + 1, model, opt, sched, gen, result, shape)
    model.eval()
    return result


@torch.inference_mode()
def perplexity(model, ids_list, loss_on, batch: int = 64) -> float:
    """exp of the mean token loss over `ids_list`, `loss_on(batch)` giving (mean loss, tokens scored)."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(ids_list), batch):
        loss, n = loss_on(ids_list[i : i + batch])
        total, count = total + float(loss) * n, count + n
    model.train()
    return math.exp(total / max(count, 1))


@torch.inference_mode()
def accuracy(model, held, batch_of, batch: int = 128) -> float:
    """The share of the held-out (texts, labels) whose most likely class is the label."""
    model.eval()
    texts, labels = held
    correct = 0
    for i in range(0, len(texts), batch):
        enc, y = batch_of(texts[i : i + batch], labels[i : i + batch])
        correct += int((model(**enc).logits.argmax(-1) == y).sum())
    model.train()
    return correct / max(len(texts), 1)


class Checkpoints:
    """The per-epoch checkpoints of one training (`stage`: `policy`, `classifier`) in `folder`; only the
    latest is kept."""

    def __init__(self, folder: Path, stage: str, log=None):
        self.folder, self.stage, self.log = Path(folder), stage, log

    def path(self, epoch: int) -> Path:
        return self.folder / f"{self.stage}-epoch-{epoch}"

    def saved(self) -> list[tuple[int, Path]]:
        """(epoch, folder) of every finished checkpoint of this stage, latest last."""
        if not self.folder.is_dir():
            return []
        found = []
        for path in self.folder.iterdir():
            match = re.fullmatch(rf"{re.escape(self.stage)}-epoch-(\d+)", path.name)
            if match and (path / STATE_FILE).is_file() and (path / WEIGHTS_FILE).is_file():
                found.append((int(match[1]), path))
        return sorted(found)

    def save(self, epoch: int, model, opt, sched, gen: torch.Generator, result, shape: dict) -> None:
        from safetensors.torch import save_model

        with atomic_path(self.path(epoch)) as tmp:
            tmp.mkdir(parents=True)
            save_model(model, str(tmp / WEIGHTS_FILE))
            state = {
                "epoch": epoch,
                "shape": shape,
                "result": result,
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "rng": rng_states(gen),
            }
            torch.save(state, tmp / STATE_FILE)
        for other, path in self.saved():
            if other != epoch:
                shutil.rmtree(path, ignore_errors=True)

    def resume(self, model, opt, sched, gen: torch.Generator, shape: dict) -> tuple[int, object]:
        """Load the latest checkpoint into the model, optimizer, scheduler, generator and RNGs: (its epoch,
        its report); (0, None) when there is none, or it is of another training (`shape` differs)."""
        from safetensors.torch import load_model

        saved = self.saved()
        if not saved:
            return 0, None
        epoch, path = saved[-1]
        state = torch.load(path / STATE_FILE, weights_only=True)
        if state["shape"] != shape:
            if self.log is not None:
                self.log(f"{path} is from another training ({state['shape']}, now {shape}): starting over")
            return 0, None
        load_model(model, str(path / WEIGHTS_FILE))
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        set_rng_states(state["rng"], gen)
        return epoch, state["result"]


def rng_states(gen: torch.Generator) -> dict:
    """The random states a continued training needs, as tensors and plain values (numpy's key as a tensor)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "batches": gen.get_state(),
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos)}
        | {"has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }


def set_rng_states(states: dict, gen: torch.Generator) -> None:
    gen.set_state(states["batches"])
    torch.set_rng_state(states["torch"])
    state = states["numpy"]
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state((state["kind"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"]))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
