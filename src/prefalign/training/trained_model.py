"""What a training writes: its Trainer checkpoints while it trains, then the trained model's
directory (weights, tokenizer, model card, train.json last), atomically.

Checkpoints (`train.checkpoint_steps`) go to `.<model name>.checkpoints/` beside the model's
directory, marked with the model's key, so a rerun of the same config resumes from the last one
that was written to the end and a changed config starts afresh. The model directory is written
with `save_pretrained` (safetensors) and keeps the starting model's config as it was loaded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from prefalign.pipeline.distributed import Ranks
from prefalign.pipeline.store import atomic_path, scratch_beside, write_json


def checkpoint_path(out_dir: Path) -> Path:
    """Where `out_dir`'s training checkpoints go: `.<name>.checkpoints/` beside it."""
    return out_dir.parent / f".{out_dir.name}.checkpoints"


def checkpoint_dir(out_dir: Path, key: str) -> Path:
    """checkpoint_path(out_dir), created, and emptied when the checkpoints there were made for
    another key (another config)."""
    path = checkpoint_path(out_dir)
    marker = path / "key.txt"
    if path.exists() and (not marker.exists() or marker.read_text() != key):
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    marker.write_text(key)
    return path


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest `checkpoint-N` in `folder` that was written to the end (the Trainer writes its
    trainer_state.json last); a partial one, from a kill in the middle of saving, is removed."""
    complete = []
    for path in folder.glob("checkpoint-*"):
        if not path.name.split("-")[-1].isdigit():
            continue
        if (path / "trainer_state.json").exists():
            complete.append((int(path.name.split("-")[-1]), path))
        else:
            shutil.rmtree(path, ignore_errors=True)
    return str(max(complete)[1]) if complete else None


_ABSENT = object()  # a config that had no such attribute: restore_config removes it again


def _training_settings(model) -> tuple[tuple[object, str], ...]:
    """(config object, attribute) of each setting TRL and the Trainer change for training."""
    config = getattr(model, "get_base_model", lambda: model)().config  # a PEFT model: its base model's
    return (config, "use_cache"), (config.get_text_config(), "pad_token_id")


def config_as_loaded(model) -> dict:
    """The config values that TRL and the Trainer set for training and a saved model should not
    keep: `use_cache` (off while training) and the pad token id (TRL writes the tokenizer's, often
    EOS, where the checkpoint had none). Pass the result to restore_config before saving."""
    return {name: vars(obj).get(name, _ABSENT) for obj, name in _training_settings(model)}


def restore_config(model, loaded: dict) -> None:
    """Put config_as_loaded's values back on `model`. A saved `pad_token_id` would give Llama-style
    models an embedding whose pad row (EOS) no later training updates (an iterative round starts
    from this model) and make compiled decoding compile again for this model; `use_cache` off would
    make every forward of a user's drop the KV cache."""
    for obj, name in _training_settings(model):
        if loaded[name] is _ABSENT:
            vars(obj).pop(name, None)
        else:
            setattr(obj, name, loaded[name])


def _write_card_and_info(folder: Path, card: str | None, info: dict) -> None:
    """The model card (README.md), then train.json: last, as it holds the key that marks the model done."""
    if card is not None:
        (folder / "README.md").write_text(card, encoding="utf-8")
    write_json(folder / "train.json", info)


def save_trained(model, tokenizer, info: dict, out_dir: Path, lora: bool, card: str | None = None) -> None:
    """Write a trained model's directory atomically: weights (merged, for LoRA, with the adapters
    in adapter/), tokenizer, its model card `card` as README.md, and train.json last."""
    try:
        with atomic_path(out_dir) as tmp:
            if lora:
                model.save_pretrained(tmp / "adapter", safe_serialization=True)
                model = model.merge_and_unload()
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            _write_card_and_info(tmp, card, info)
    except Exception as e:  # a full disk's message says how much room the model takes
        with contextlib.suppress(AttributeError, TypeError):
            e.bytes_needed = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        raise


def save_gathered(trainer, tokenizer, info: dict, out_dir: Path, ranks: Ranks, card: str | None = None) -> None:
    """save_trained for weights sharded over the processes (FSDP, DeepSpeed ZeRO-3): every process
    takes part in gathering them (the Trainer's save_model), the main process writes the directory."""
    staging = scratch_beside(out_dir, "gathered")
    trainer.save_model(str(staging))
    if ranks.main:
        tokenizer.save_pretrained(staging)
        _write_card_and_info(staging, card, info)
        with atomic_path(out_dir) as tmp:
            os.replace(staging, tmp)
    ranks.wait()
