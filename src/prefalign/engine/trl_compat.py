"""The one door to TRL's internals: every TRL name prefalign touches that is not TRL's public API.

prefalign's speed-ups reach inside TRL, and TRL's internals change between releases without notice.
They are all here, so a new TRL release means reading one module against TRL's source:

- `trl.DPOTrainer._compute_loss(model, inputs, return_outputs)`: the per-batch loss that the lean
  trainer (lean_dpo.py) replaces (`routes_dpo_loss`), calling TRL's own for what it does not
  compute (`trl_dpo_loss`);
- `DPOTrainer._metrics` (mode -> metric name -> values, averaged by `log`): where the lean loss
  leaves its metrics (`step_metrics`);
- the attributes the lean trainer reads off a DPOTrainer (`loss_types`, `loss_weights`, `beta`,
  `f_divergence_type`, `ld_alpha`, `use_weighting`, `aux_loss_enabled`, `precompute_ref_logps`,
  `ref_model`, `compute_ref_log_probs`) and the fused LM head's `fused_lm_head=True` forward
  (`add_fused_lm_head`'s outputs `log_probs`, `entropy`, `mean_logits`, `is_top1`);
- `trl.trainer.utils._use_triton(device)`: where the fused LM head decides to project only the
  labelled positions (`head_positions`);
- `trl.trainer.dpo_trainer.DataCollatorForPreference`: the text collator that
  preference_batches.py collates faster (`preference_collator_class`);
- `trl.trainer.rloo_trainer.create_model_from_path`: how RLOOTrainer loads its reference, replaced
  by the in-memory copy (`rloo_reference_is`).

They were checked against the TRL releases in CHECKED_TRL. With any other TRL installed,
`lean_trainer_usable` is false: the DPO training runs TRL's own `DPOTrainer` and none of the
patches above is applied, so training still works, without prefalign's speed-ups (`unchecked_note`
is the log line that says so). Nothing here imports TRL until it is used.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata

# The TRL release series (major.minor) whose internals, listed above, prefalign was checked against.
CHECKED_TRL = ("1.16",)


@functools.cache
def installed_trl() -> str:
    """The installed TRL's version, e.g. `1.16.0` (read once: the lean trainer asks every step)."""
    return importlib.metadata.version("trl")


def lean_trainer_usable() -> bool:
    """Whether the installed TRL is one whose internals prefalign was checked against (CHECKED_TRL):
    only then are the lean trainer and the patches of this module used."""
    return ".".join(installed_trl().split(".")[:2]) in CHECKED_TRL


def unchecked_note(what: str) -> str:
    """The log line for a training on a TRL release whose internals were not checked: `what` runs
    through TRL's own code, without prefalign's speed-ups."""
    checked = ", ".join(f"{series}.x" for series in CHECKED_TRL)
    return (
        f"  TRL {installed_trl()} is not a release prefalign was checked against ({checked}): {what}, "
        "without prefalign's speed-ups"
    )


# ---- DPOTrainer's loss hook and metrics ---------------------------------------------------------


def routes_dpo_loss(cls):
    """Class decorator for a DPOTrainer subclass: TRL's per-batch loss hook (`_compute_loss`, which
    DPOTrainer.compute_loss calls) goes to the subclass's `batch_loss(model, inputs, return_outputs)`."""

    def _compute_loss(self, model, inputs, return_outputs):
        return self.batch_loss(model, inputs, return_outputs)

    cls._compute_loss = _compute_loss
    return cls


def trl_dpo_loss(trainer, model, inputs, return_outputs):
    """DPOTrainer's own loss for one batch (its `_compute_loss`), metrics logged as TRL logs them."""
    from trl import DPOTrainer

    return DPOTrainer._compute_loss(trainer, model, inputs, return_outputs)


def step_metrics(trainer) -> dict:
    """A TRL trainer's metrics since its last log: mode (`train`, `eval`) -> metric name -> values."""
    return trainer._metrics


# ---- patches of TRL's modules -------------------------------------------------------------------


@contextlib.contextmanager
def head_positions(compact):
    """While inside, TRL's fused LM head projects only the labelled (completion) positions on the
    devices where `compact(device, trl_choice)` is true, and every position elsewhere.

    TRL's own choice: only on CUDA, where it gathers the labelled positions with a boolean mask (a
    host sync). The results are the same either way; only the work and the syncs differ. On a TRL
    release not in CHECKED_TRL nothing is changed.
    """
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if original is None or not lean_trainer_usable():
        yield
        return
    trl_utils._use_triton = lambda device: compact(device, original(device))
    try:
        yield
    finally:
        trl_utils._use_triton = original


def completion_tokens_only():
    """Have TRL's fused LM head project only the completion tokens on every device.

    TRL 1.16 scores only the positions with a label on CUDA (its Triton path) but every position,
    padding and prompt included, elsewhere, to keep tile shapes fixed for compilers such as Neuron's.
    On CPU without compilation that only wastes work: the per-token vocabulary projection and its
    backward are most of a small policy's training step. The results are the same either way.
    """
    return head_positions(lambda device, trl_choice: device.type == "cpu" or trl_choice)


def every_position():
    """Have TRL's fused LM head project every position (the unlabelled ones come out zero): no
    boolean gather, so no host sync on a GPU."""
    return head_positions(lambda device, trl_choice: False)


@contextlib.contextmanager
def rloo_reference_is(ref_model):
    """Have RLOOTrainer use `ref_model` as its reference instead of loading one.

    RLOOTrainer 1.16 has no `ref_model` argument: with beta > 0 it reloads the policy by name,
    `from_pretrained(model.config._name_or_path)`. That works for a local directory, but for a hub
    id it ignores the revision and asks the hub again, and in every case reads the weights twice.
    Only the reference goes through this function there (the policy is passed as a model, not a
    name). On a TRL release not in CHECKED_TRL, RLOOTrainer loads the reference by name itself.
    """
    import trl.trainer.rloo_trainer as rloo

    original = getattr(rloo, "create_model_from_path", None)
    if original is None or not lean_trainer_usable():
        yield
        return
    rloo.create_model_from_path = lambda *args, **kwargs: ref_model
    try:
        yield
    finally:
        rloo.create_model_from_path = original


def preference_collator_class():
    """TRL's collator of text preference pairs (`DataCollatorForPreference`)."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    return DataCollatorForPreference
