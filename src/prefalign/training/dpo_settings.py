"""The settings of one DPO training: a recipe, its overrides and the device, as `trl.DPOConfig` fields.

Pure functions of plain values (no model, no file, no global): `recipe_settings` merges a recipe
(config/recipes.py), the arithmetic of `train.precision` and `train.dpo`'s overrides for a device,
and resolves prefalign's own switches (recipes.OWN_SETTINGS) for it; `dpo_settings` adds what one
training sets itself (loss, beta, seed, output directory, trackers, checkpoints, the processes
sharing each batch, the policy's position limit). What the device can do is passed in as
`DeviceTraits`; `device_traits` asks torch and transformers for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from prefalign.config.recipes import OWN_SETTINGS, RECIPE_PRECISION, RECIPES, precision_settings

if TYPE_CHECKING:
    import torch

    from prefalign.training.job import DpoJob


@dataclass(frozen=True)
class DeviceTraits:
    """What a training's settings depend on about its device."""

    type: str  # torch's device type: "cpu", "cuda", "mps", ...
    bf16: bool = False  # a CUDA GPU with bfloat16 arithmetic
    tf32: bool = False  # a CUDA GPU with TF32 matrix multiplies (Ampere and later)


def device_traits(device: torch.device) -> DeviceTraits:
    """`device`'s traits, by torch's and TrainingArguments' own checks."""
    import torch
    from transformers import training_args

    on_cuda = device.type == "cuda"
    return DeviceTraits(
        device.type,
        bf16=on_cuda and torch.cuda.is_bf16_supported(),
        tf32=on_cuda and training_args.is_torch_tf32_available(),
    )


def per_device_batch(recipe: str, overrides: dict) -> int:
    """The pairs per training step of one process in a one-process run (the recipe's, or train.dpo's)."""
    return int(overrides.get("per_device_train_batch_size", RECIPES[recipe]["per_device_train_batch_size"]))


def resolve_loss(entry, slic_sft_weight: float = 0.1) -> tuple[str, list[str], list[float] | None]:
    """(label, TRL loss types, TRL loss weights) of a `train.losses` entry: a TRL loss type, `slic`
    (hinge plus the SFT term weighted `slic_sft_weight`) or a LossMix."""
    if entry == "slic":
        return "slic", ["hinge", "sft"], [1.0, slic_sft_weight]
    if isinstance(entry, str):
        return entry, [entry], None
    return entry.label(), list(entry.types), list(entry.weights) if entry.weights is not None else None


def recipe_settings(
    recipe: str, overrides: dict, precision: str | None, device: DeviceTraits, processes: int = 1
) -> tuple[dict, dict]:
    """(DPOConfig fields, prefalign's own switches) of a recipe with `overrides` and `precision`
    (None: the recipe's) on `device`, before what one training sets itself."""
    arithmetic = precision_settings(precision or RECIPE_PRECISION[recipe], device.type, device.bf16, device.tf32)
    settings = {**RECIPES[recipe], **arithmetic, **overrides}
    own = {k: settings.pop(k) for k in list(settings) if k in OWN_SETTINGS}
    compile_step = own.get("compile_step", "eager")
    if compile_step == "auto":
        compile_step = "graphs" if device.type == "cuda" and processes == 1 else "eager"
    # CUDA graphs need CUDA: elsewhere the step is compiled without them.
    own["compile_step"] = "fused" if compile_step == "graphs" and device.type != "cuda" else compile_step
    if settings.get("precompute_ref_log_probs") == "on_gpu":
        settings["precompute_ref_log_probs"] = device.type == "cuda"
    if device.type == "cpu":
        settings.setdefault("use_cpu", True)
    if device.type == "cuda":
        # Batches go to the GPU from pinned memory without the host waiting for the copy: a blocking
        # copy waits for every kernel already queued, one host sync per input tensor and step.
        settings.setdefault("dataloader_pin_memory", True)
        settings.setdefault("accelerator_config", {"non_blocking": True})
    return settings, own


def dpo_settings(
    job: DpoJob, device: DeviceTraits, output_dir: str, tracker: dict | None = None, positions: int | None = None
) -> tuple[dict, dict]:
    """(DPOConfig fields, every setting: those and prefalign's own switches) of `job`'s training.

    `output_dir`: the Trainer's scratch directory. `tracker`: the experiment-tracker fields from
    trackers.reporting (default: report to none). `positions`: the policy's position limit; a
    longer `max_length` is lowered to it. With `job.ranks.count` > 1 processes training one model
    together, each takes 1/processes of the recipe's batch, so a step still sees the recipe's batch.
    """
    processes = job.ranks.count
    settings, own = recipe_settings(job.recipe, job.overrides, job.precision, device, processes)
    _, loss_types, loss_weights = resolve_loss(job.loss, job.slic_sft_weight)
    settings.update(
        output_dir=output_dir,
        loss_type=loss_types,
        beta=job.beta,
        seed=job.seed,
        data_seed=job.seed,
        **(tracker or {"report_to": "none"}),
        save_strategy="no",
        logging_steps=settings.get("logging_steps", 10),
        disable_tqdm=settings.get("disable_tqdm", True),
        # The Trainer's NaN/inf filter reads the loss on the host every step (a GPU sync); a NaN loss is logged as NaN.
        logging_nan_inf_filter=settings.get("logging_nan_inf_filter", False),
    )
    if positions and (settings.get("max_length") is None or settings["max_length"] > positions):
        # A pair longer than the model's positions would index past its position table: TRL truncates
        # it instead. Sampled texts fit, but decoding and re-encoding a text of broken byte tokens
        # (a collapsed policy's) can give more tokens than were sampled.
        settings["max_length"] = positions
    if job.checkpoint_steps:
        # The latest checkpoint only: it is all a resumed training needs.
        settings.update(save_strategy="steps", save_steps=job.checkpoint_steps, save_total_limit=1)
    if loss_weights is not None:
        settings["loss_weights"] = list(loss_weights)
    if processes > 1:
        settings["per_device_train_batch_size"] = settings["per_device_train_batch_size"] // processes
        # Every parameter gets a gradient each step; DDP's search for unused ones would only cost time.
        settings.setdefault("ddp_find_unused_parameters", False)
    if own.get("group_by_length"):
        # The pairs arrive already in length-grouped random order (see dpo_data.training_pairs).
        settings["train_sampling_strategy"] = "sequential"
    return settings, {**settings, **own}
