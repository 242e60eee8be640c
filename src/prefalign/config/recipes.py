"""The training recipes: named sets of `trl.DPOConfig` settings (plus prefalign's own switches).

- `seed`: the original experiment's settings (RMSprop, lr 5e-3, 50 warmup steps, linear decay,
  3 epochs, batch 8, max_length 256). On CUDA its matrix multiplies run in TF32 (RECIPE_PRECISION);
  the original ran in fp32, which `train.precision: fp32` restores. The reference log-probs, which
  the original recomputed every step, are computed once before training on a GPU (`"on_gpu"`): the
  same numbers (the reference is frozen and has no dropout), in large batches, and each step loses
  a forward pass. On CPU the separate pass costs more than it saves in a one-epoch run, so there
  they are still computed every step.
- `default`: TRL's defaults with reference log-probs computed once before training, a learning rate
  that moves a small policy in one epoch without collapsing it into word salad (5e-5: on the demo
  models, one epoch of random pairs, sigmoid loss, beta 0.1 moved the mean reward 0.42 -> 0.81 and
  the diversity 5.23 -> 5.14 nats with the text still fluent, where the `seed` recipe's 5e-3 turns
  it into a salad of positive words), no gradient
  checkpointing (these policies are small; recomputation only costs time) and length-grouped
  batches.

The arithmetic is `train.precision`'s, else the recipe's (`RECIPE_PRECISION`), and `train.dpo`
overrides any of these per config. Plain data, so the config schema can name the
recipes without importing the trainer.
"""

from __future__ import annotations

# Training switches that are prefalign's own, accepted in `train.dpo` next to DPOConfig's fields.
OWN_SETTINGS = {
    "group_by_length": "batch pairs of similar token length (a random order of length-sorted megabatches)",
    "completion_only_head": "project only completion tokens through the LM head on every device (TRL does so on "
    "CUDA only); same results, less work",
    "compile_step": "the policy's forward and log-prob head per training step (in one process with the DPO loss and "
    "the logged metrics) and the optimizer's update unless it is a fused one: `eager` (plain "
    "PyTorch), `fused` (torch.compile's fused kernels), `graphs` (the forward's recorded as CUDA graphs: one launch "
    "per forward and backward), "
    "`auto` (`graphs` on one CUDA GPU, else `eager`); compiling pads every batch to the longest pair and takes "
    "the first step 20-45 s on an H100 (GPT-2-small), once per process and precision",
}
# The values of the non-boolean own settings (the others are true / false).
OWN_CHOICES = {"compile_step": ("eager", "fused", "graphs", "auto")}

RECIPES: dict[str, dict] = {
    "seed": dict(
        learning_rate=5e-3,
        optim="rmsprop",
        warmup_steps=50,
        lr_scheduler_type="linear",
        num_train_epochs=3,
        per_device_train_batch_size=8,
        max_length=256,
        gradient_checkpointing=False,
        precompute_ref_log_probs="on_gpu",
        precompute_ref_batch_size=64,
        completion_only_head=True,
        compile_step="auto",
    ),
    "default": dict(
        learning_rate=5e-5,
        num_train_epochs=1,
        per_device_train_batch_size=8,
        max_length=256,
        gradient_checkpointing=False,
        precompute_ref_log_probs=True,
        precompute_ref_batch_size=64,
        group_by_length=True,
        completion_only_head=True,
        compile_step="auto",
    ),
}

RECIPE_NAMES = tuple(RECIPES)
PRECISIONS = ("auto", "fp32", "bf16", "tf32")
# Each recipe's arithmetic when `train.precision` is empty. `seed`: TF32 matrix multiplies on CUDA,
# plain fp32 elsewhere (where `tf32` means fp32). benchmarks/precision.py (demo models, seed recipe,
# 8 training seeds, CPU) found bf16 autocast, a coarser rounding than TF32's, within fp32's
# seed-to-seed differences in reward, diversity and KL; on an H100 TF32 itself (3 seeds) was too.
# `train.precision: fp32` gives the original's arithmetic on a GPU.
RECIPE_PRECISION = {"seed": "tf32", "default": "auto"}


def precision_settings(precision: str, device_type: str, bf16_supported: bool, tf32_supported: bool) -> dict:
    """The DPOConfig switches for `train.precision` on a device.

    `bf16`: autocast to bfloat16 with fp32 master weights and optimizer state (HF Trainer's `bf16`);
    `tf32`: fp32 storage with TF32 matrix multiplies (CUDA GPUs that have them, Ampere and later;
    plain fp32 elsewhere, e.g. on a T4 or V100); `auto`: bf16 on a CUDA GPU that supports it, fp32
    elsewhere (on CPU bf16 autocast is slower, not faster).
    """
    if precision == "auto":
        precision = "bf16" if device_type == "cuda" and bf16_supported else "fp32"
    settings = {"bf16": precision == "bf16", "fp16": False}
    if device_type == "cuda":
        settings["tf32"] = precision == "tf32" and tf32_supported
    return settings
