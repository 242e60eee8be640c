"""The training recipes: named sets of `trl.DPOConfig` settings (plus prefalign's own switches).

- `seed`: the original experiment's settings (RMSprop, lr 5e-3, 50 warmup steps, linear decay,
  3 epochs, batch 8, max_length 256, fp32, reference log-probs recomputed every step).
- `default`: TRL's defaults with reference log-probs computed once before training, a learning rate
  that moves a small policy in one epoch without collapsing it into word salad (5e-5: the value
  that kept fluent text in the demo-size probe of ../shared/NOTES.md), no gradient checkpointing
  (these policies are small; recomputation only costs time) and length-grouped batches.

`train.dpo` overrides any of these per config. Plain data, so the config schema can name the
recipes without importing the trainer.
"""

from __future__ import annotations

# Training switches that are prefalign's own, accepted in `train.dpo` next to DPOConfig's fields.
OWN_SETTINGS = {
    "group_by_length": "batch pairs of similar token length (a random order of length-sorted megabatches)",
    "completion_only_head": "project only completion tokens through the LM head on every device (TRL does so on "
    "CUDA only); same results, less work",
}

RECIPES: dict[str, dict] = {
    "seed": dict(
        learning_rate=5e-3, optim="rmsprop", warmup_steps=50, lr_scheduler_type="linear", num_train_epochs=3,
        per_device_train_batch_size=8, max_length=256, bf16=False, fp16=False, gradient_checkpointing=False,
        precompute_ref_log_probs=False, completion_only_head=True,
    ),
    "default": dict(
        learning_rate=5e-5, num_train_epochs=1, per_device_train_batch_size=8, max_length=256,
        gradient_checkpointing=False, precompute_ref_log_probs=True, precompute_ref_batch_size=64,
        group_by_length=True, completion_only_head=True,
    ),
}  # fmt: skip

RECIPE_NAMES = tuple(RECIPES)
