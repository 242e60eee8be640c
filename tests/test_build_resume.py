"""A built-in model build interrupted after an epoch continues from its checkpoint when run again, and ends
with the weights of an uninterrupted build; two processes building one spec build it once."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from prefalign.models import build_training as T
from prefalign.models import builtin as B
from prefalign.models.build_cache import build_lock, build_target, built, partial_dir

# Two epochs of each training, on the synthetic corpus: seconds on 2 cores.
SPEC = B.BuildSpec(
    name="resume",
    corpus="synthetic",
    vocab_size=320,
    lm_layers=1,
    lm_dim=32,
    lm_heads=2,
    lm_epochs=2,
    lm_positions=80,
    clf_layers=1,
    clf_dim=32,
    clf_heads=2,
    clf_epochs=2,
    max_text_tokens=48,
    held_out=40,
)


def silent(msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    return B.build(SPEC, root=tmp_path_factory.mktemp("straight"), log=silent)


def assert_same_build(out: Path, reference: Path) -> None:
    from safetensors.torch import load_file

    for part in ("policy", "reward"):
        ours, theirs = load_file(out / part / "model.safetensors"), load_file(reference / part / "model.safetensors")
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
        assert (out / part / "model.safetensors").read_bytes() == (reference / part / "model.safetensors").read_bytes()
        assert (out / part / "tokenizer.json").read_text() == (reference / part / "tokenizer.json").read_text()
    info, reference_info = (json.loads((d / "info.json").read_text()) for d in (out, reference))
    assert info["policy"] == reference_info["policy"] and info["reward_model"] == reference_info["reward_model"]


def epochs_trained(monkeypatch) -> list[int]:
    """A list that grows by one at each epoch a training runs (build_training.batches is drawn once an epoch)."""
    epochs: list[int] = []
    draw = T.batches

    def counted(*args):
        epochs.append(1)
        return draw(*args)

    monkeypatch.setattr(T, "batches", counted)
    return epochs


@pytest.mark.parametrize("stage", ["policy", "classifier"])
def test_an_interrupted_build_continues_after_its_last_epoch(stage, uninterrupted, tmp_path, monkeypatch):
    save = T.Checkpoints.save

    def interrupted(self, epoch, *args, **kwargs):
        save(self, epoch, *args, **kwargs)
        if self.stage == stage and epoch == 1:
            raise KeyboardInterrupt  # Ctrl-C right after the epoch's checkpoint

    with monkeypatch.context() as patched:
        patched.setattr(T.Checkpoints, "save", interrupted)
        with pytest.raises(KeyboardInterrupt):
            B.build(SPEC, root=tmp_path, log=silent)
    target = build_target(SPEC.key(), tmp_path)
    assert not target.exists() and not built(target)  # the partial directory is no build
    assert (partial_dir(target) / f"{stage}-epoch-1" / T.WEIGHTS_FILE).is_file()

    def no_tokenizers(*args):
        raise AssertionError("the rerun trains the tokenizers again")

    monkeypatch.setattr(B, "train_tokenizers", no_tokenizers)
    epochs = epochs_trained(monkeypatch)
    assert B.build(SPEC, root=tmp_path, log=silent) == target
    # Four epochs in all (two per training): the ones finished before the interruption are not run again.
    assert len(epochs) == (3 if stage == "policy" else 1)
    assert_same_build(target, uninterrupted)
    assert not partial_dir(target).exists()
    assert sorted(p.name for p in target.parent.iterdir()) == sorted([target.name, f".{target.name}.lock"])


def test_a_killed_build_continues_after_its_last_epoch(uninterrupted, tmp_path):
    """A SIGKILL at any moment after the policy's first checkpoint (maybe in the middle of writing the next)."""
    target = build_target(SPEC.key(), tmp_path)
    first = partial_dir(target) / "policy-epoch-1" / T.STATE_FILE
    code = (
        "import json, sys; from pathlib import Path; from prefalign.models.builtin import BuildSpec, build; "
        "build(BuildSpec(**json.loads(sys.argv[1])), root=Path(sys.argv[2]), log=lambda m: None)"
    )
    args = [sys.executable, "-c", code, json.dumps(dataclasses.asdict(SPEC)), str(tmp_path)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 300
    while not first.is_file() and time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert not built(target)
    assert B.build(SPEC, root=tmp_path, log=silent) == target
    assert_same_build(target, uninterrupted)
    assert not partial_dir(target).exists()


def test_a_second_process_waits_for_the_build_and_finds_it_done(uninterrupted, tmp_path, monkeypatch):
    """While another process holds the build's lock, build() waits; then it returns that process's build."""

    def no_training(*args, **kwargs):
        raise AssertionError("the waiting process trains too")

    monkeypatch.setattr(B, "train_policy", no_training)
    target = build_target(SPEC.key(), tmp_path)
    said: list[str] = []
    returned: list[Path] = []
    with build_lock(target, silent):
        waiter = threading.Thread(target=lambda: returned.append(B.build(SPEC, root=tmp_path, log=said.append)))
        waiter.start()
        deadline = time.time() + 60
        while not said and time.time() < deadline:  # it said it waits (before that, it says nothing)
            time.sleep(0.01)
        assert said and waiter.is_alive()
        shutil.copytree(uninterrupted, target)  # the other process's build, finished
    waiter.join(timeout=60)
    assert returned == [target]
    assert_same_build(target, uninterrupted)


def test_a_checkpoint_of_another_training_is_not_resumed(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=4)
    checkpoints = T.Checkpoints(tmp_path, "policy")
    shape = {"n": 10, "batch": 4, "epochs": 2}
    checkpoints.save(1, model, opt, sched, torch.Generator(), 0.5, shape=shape)
    assert checkpoints.resume(model, opt, sched, torch.Generator(), shape={**shape, "n": 11}) == (0, None)
    assert checkpoints.resume(model, opt, sched, torch.Generator(), shape=shape) == (1, 0.5)
    checkpoints.save(2, model, opt, sched, torch.Generator(), 0.25, shape=shape)
    assert [epoch for epoch, _ in checkpoints.saved()] == [2]  # only the latest is kept


def test_the_random_states_come_back():
    gen = torch.Generator().manual_seed(3)
    random.seed(1), np.random.seed(2), torch.manual_seed(4)
    np.random.standard_normal()  # numpy's cached Gaussian is part of its state
    states = T.rng_states(gen)
    expected = (random.random(), np.random.standard_normal(), torch.rand(2), torch.rand(2, generator=gen))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    gen.manual_seed(9)
    T.set_rng_states(states, gen)
    again = (random.random(), np.random.standard_normal(), torch.rand(2), torch.rand(2, generator=gen))
    assert again[:2] == expected[:2] and torch.equal(again[2], expected[2]) and torch.equal(again[3], expected[3])
