"""TRL's DPOTrainer without a host sync per training step: the same loss, metrics kept on the device.

TRL 1.16 turns about 17 metric values into Python floats (`.item()`) in every loss call, and
selects the SFT loss's tokens with a boolean mask; on a GPU each of those waits for the queued
kernels to finish, so the CPU cannot run ahead and a small model's step is spent waiting. Here
the losses that prefalign's recipes use (`sigmoid`, `hinge`, `ipo`, `sft` and weighted sums of
them, standard reverse-KL DPO) are computed with the same formulas (lean_loss.py), the metrics stay
tensors until a logging step turns them into floats all at once (and stops training with
`TrainingDiverged` if the logged loss is NaN or infinite), and anything else (other loss types,
f-divergences, `ld_alpha`, WPO weighting, MoE auxiliary losses, PEFT references) goes to TRL's own
code. The TRL internals this trainer relies on go through trl_compat.py, and it is used only with
the TRL releases they were checked against (`trl_compat.lean_trainer_usable`).

Two syncs remain inside the forward pass, and `sync_free` removes them on a GPU: transformers
checks the 2-D attention mask for padding on the host (it is given the equivalent 4-D causal mask
instead, for SDPA attention, when a small batch shows the architecture takes it:
four_d_mask_works), and TRL's fused LM head gathers the completion positions with a boolean mask
(it scores every position instead, and the ones without a label are zeroed as before). Same
numbers either way; on CPU, where nothing waits, the cheaper variants stay.

`compile_step` (the recipes' `compile_step` setting) runs the policy's forward and its per-token
head through `torch.compile` instead (`completion_token_stats`: the model's own logits, then the
log-softmax, entropy, mean logit and top-1 of every position, which inductor fuses), on batches
padded to one fixed length so one graph serves the whole training; `graphs` also records it as CUDA
graphs, so a step's forward and backward are each launched at once rather than as ~1,000 kernels
from Python. In one process the compiled function also computes the DPO loss and the logged
metrics (`whole_training_loss`), so they and their backward are inside the graphs too. A batch of
another size (an epoch's last) takes the eager path. The optimizer's update (`compile_optimizer_step`,
unless it is a fused one already) is compiled too. Gradient clipping stays eager: compiled, it
kept torch's norm eager and stacked the per-parameter norms in ~138 small kernels a step (measured
in a profile on an H100).
"""

from __future__ import annotations

import contextlib
import math

import torch
from trl import DPOTrainer

from prefalign.engine.arithmetic import forget_compiled_code_made_under_other_arithmetic
from prefalign.engine.compiled_optimizer import compile_optimizer_step, scheduled_learning_rate
from prefalign.engine.lean_loss import (
    LEAN_LOSS_TYPES,
    METRIC_NAMES,
    causal_padding_mask,
    completion_token_stats,
    four_d_mask_works,
    loss_and_metrics,
    whole_training_loss,
)
from prefalign.engine.preference_batches import numpy_collator
from prefalign.engine.trl_compat import every_position, routes_dpo_loss, step_metrics, trl_dpo_loss
from prefalign.errors import TrainingDiverged

_NON_MODEL_KEYS = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}
# The batch keys of text-only pairs; a batch with others (images, ...) goes to TRL's own loss.
_TEXT_KEYS = {"input_ids", "attention_mask", *_NON_MODEL_KEYS}
# The fused LM head's per-token outputs, in completion_token_stats' order.
_HEAD_OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")


@routes_dpo_loss
class LeanDPOTrainer(DPOTrainer):
    """DPOTrainer whose training steps queue GPU work without waiting on it (see the module docstring)."""

    # Where to use the 4-D attention mask and the every-position LM head (see the module docstring):
    # "gpu" (the default), "always" (tests compare them with TRL's on CPU) or "never".
    sync_free = "gpu"
    # One of recipes.OWN_CHOICES["compile_step"] but "auto" (the DPO training resolves it and pads
    # every batch to one length first).
    compile_step = "eager"
    # torch.compile's backend: "inductor" (fused Triton kernels; with "graphs", CUDA graphs around
    # them) or "cudagraphs" (CUDA graphs of the eager kernels, nothing generated; benchmarks compare).
    compile_backend = "inductor"
    _compiled = None  # (the compiled function, the batch rows it was compiled for, whether it is the whole loss)
    _four_d_mask = None  # whether the policy takes the 4-D mask (four_d_mask_works; checked where it would be used)
    compile_optimizer = True  # with a compiled step, compile the optimizer's update too (benchmarks compare)
    # The compiled update's learning rates on the parameters' device, not the CPU (benchmarks compare).
    lr_on_device = False
    note = staticmethod(print)  # where a message for the user goes (the DPO training: the run's log)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.data_collator = numpy_collator(self.data_collator)  # TRL's batches, collated with less host time

    def lean(self) -> bool:
        """Whether this trainer's settings are the ones computed here (worked out once: accelerate's
        PEFT check reads package metadata, milliseconds that every training step would pay)."""
        if getattr(self, "_lean", None) is None:
            self._lean = self._lean_settings()
        return self._lean

    def _lean_settings(self) -> bool:
        from accelerate.utils import is_peft_model

        return (
            set(self.loss_types) <= LEAN_LOSS_TYPES
            and self.f_divergence_type == "reverse_kl"
            and self.ld_alpha is None
            and not self.use_weighting
            and not self.aux_loss_enabled
            and not is_peft_model(self.model)
            and (self.precompute_ref_logps or self.ref_model is not None)
        )

    # ---- the loss of one batch ------------------------------------------------------------------

    def batch_loss(self, model, inputs, return_outputs):
        """The loss of one batch (DPOTrainer's per-batch loss hook, see trl_compat.routes_dpo_loss):
        computed here for the lean settings, with the metrics appended as tensors; by TRL otherwise."""
        if return_outputs or not self.lean() or not set(inputs) <= _TEXT_KEYS:
            return trl_dpo_loss(self, model, inputs, return_outputs)
        metrics = step_metrics(self)["train" if self.model.training else "eval"]
        compiled, whole = self.compiled_loss(inputs["input_ids"].shape[0])
        on_gpu = inputs["input_ids"].device.type == "cuda"
        sync_free = self.sync_free == "always" or (self.sync_free == "gpu" and on_gpu)
        if self._four_d_mask is None and (compiled is not None or sync_free):  # only where a 4-D mask would be used
            self._four_d_mask = four_d_mask_works(self.accelerator.unwrap_model(model))
        four_d_mask = bool(self._four_d_mask)
        outputs = self._compiled_outputs(compiled, whole, model, inputs, four_d_mask) if compiled is not None else None
        if outputs is not None and whole:
            loss, values = outputs
            # Kept until the next logging step; CUDA graphs overwrite their outputs at the next replay.
            _keep(metrics, values.detach().clone().unbind())
            return loss
        stats = outputs if outputs is not None else self._eager_token_stats(model, inputs, sync_free, four_d_mask)
        # Metrics left on the device until `log` (num_tokens, a running count, is not kept).
        loss, values = loss_and_metrics(
            *stats,
            inputs["completion_mask"],
            *self._reference_logps(inputs),
            self.beta,
            self.loss_types,
            self.loss_weights,
            self.accelerator.gather,
            self.accelerator.gather_for_metrics,
        )
        _keep(metrics, values)
        return loss

    def _reference_logps(self, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference's sequence log-probs (batch,) of the chosen and of the rejected texts."""
        if self.precompute_ref_logps:
            return inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        return self.compute_ref_log_probs(self.ref_model, inputs)

    def _compiled_outputs(self, compiled, whole: bool, model, inputs, four_d_mask: bool):
        """What the compiled function returns for this batch ((loss, stacked metrics) when it is the
        whole loss, else completion_token_stats' outputs), or None when compiling failed in the
        first step: the step stays correct without compilation, only slower (e.g. no C compiler
        for Triton); a failure later is raised."""
        if self.compile_step == "graphs":
            torch.compiler.cudagraph_mark_step_begin()  # a new training step: the last one's buffers are free
        args = (model, inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"], four_d_mask)
        try:
            if whole:
                losses = (self.beta, tuple(self.loss_types), tuple(self.loss_weights))
                return compiled(*args, *self._reference_logps(inputs), *losses)
            return compiled(*args)
        except Exception as e:
            if self.state.global_step > 0:
                raise
            self.note(
                f"  compiling the training step failed ({type(e).__name__}: {str(e)[:300]}); "
                f"training goes on without compilation, as with train.dpo.compile_step: eager"
            )
            self.compile_step = "eager"
            return None

    def _eager_token_stats(self, model, inputs, sync_free: bool, four_d_mask: bool) -> tuple[torch.Tensor, ...]:
        """completion_token_stats' outputs ((2*batch, seq-1) each, 0 outside completions) from the
        policy's forward through TRL's fused LM head; with `sync_free`, without its host syncs."""
        completion_mask = inputs["completion_mask"]  # (2*batch, seq), chosen rows first
        model_kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}
        model_kwargs["use_cache"] = False
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        if sync_free and four_d_mask:
            model_kwargs["attention_mask"] = causal_padding_mask(model_kwargs["attention_mask"])
        with every_position() if sync_free else contextlib.nullcontext():
            outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
        predicted = completion_mask.size(1) - 1  # the positions that predict a token
        return tuple(getattr(outputs, name)[:, -predicted:] for name in _HEAD_OUTPUTS)

    def compiled_loss(self, rows: int):
        """(the compiled function for a batch of `rows` rows, whether it is whole_training_loss), or
        (None, False): not compiling, or another batch size than the first (compiling it again would
        cost more than its one step saves). One process compiles the whole loss; several compile
        completion_token_stats, the metrics then being gathered across processes eagerly."""
        if self.compile_step == "eager" or not self.model.training:
            return None, False
        if self._compiled is None:
            forget_compiled_code_made_under_other_arithmetic(
                torch.bfloat16 if self.args.bf16 else torch.float16 if self.args.fp16 else None, self.note
            )
            whole = self.accelerator.num_processes == 1
            function = whole_training_loss if whole else completion_token_stats
            if self.compile_backend == "cudagraphs":
                compiled = torch.compile(function, dynamic=False, backend="cudagraphs")
            else:
                mode = "reduce-overhead" if self.compile_step == "graphs" else None
                compiled = torch.compile(function, dynamic=False, mode=mode)
            self._compiled = (compiled, rows, whole)
        compiled, compiled_rows, whole = self._compiled
        return (compiled, whole) if rows == compiled_rows else (None, False)

    # ---- the Trainer's per-step work ------------------------------------------------------------

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        # Only where the step is compiled (`compile_step`, set before training): on a GPU the update's
        # launches are host time; DeepSpeed and FSDP bring optimizers of their own.
        if (
            self.compile_step != "eager"
            and self.compile_optimizer
            and not (self.is_deepspeed_enabled or self.is_fsdp_enabled)
        ):
            compile_optimizer_step(optimizer, self.note, self.args.device if self.lr_on_device else None)
        return optimizer

    def _get_learning_rate(self):
        # The Trainer reads it every step: from the schedule's formula rather than a rate tensor that
        # may be on the GPU.
        rate = scheduled_learning_rate(self.lr_scheduler) if self.lr_scheduler is not None else None
        return super()._get_learning_rate() if rate is None else rate

    def floating_point_ops(self, inputs) -> int:
        """The Trainer's FLOP count for its logs (6 x tokens x non-embedding parameters), with the
        parameters counted once: counting them walks every module, each step (~1-2 ms of a GPU step's host time)."""
        if getattr(self, "_counted_parameters", None) is None:
            model = self.model
            self._counted_parameters = (
                model.num_parameters(exclude_embeddings=True) if hasattr(model, "num_parameters") else 0
            )
        main_input = getattr(self.model, "main_input_name", "input_ids")
        return 6 * inputs[main_input].numel() * self._counted_parameters if main_input in inputs else 0

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # The one host sync per logging step: every metric tensor since the last log, copied at once.
        pending = [
            (values, key)
            for values in step_metrics(self).values()
            for key, entries in values.items()
            if any(torch.is_tensor(v) for v in entries)
        ]
        if pending:
            device = self.accelerator.device
            flat = [
                torch.as_tensor(v, dtype=torch.float32, device=device) for values, key in pending for v in values[key]
            ]
            copied = iter(torch.stack(flat).cpu().tolist())
            for values, key in pending:
                values[key] = [next(copied) for _ in values[key]]
        loss = logs.get("loss")
        if isinstance(loss, float) and not math.isfinite(loss):
            raise TrainingDiverged(
                f"the training loss is {loss} at step {self.state.global_step} of {self.state.max_steps}"
            )
        super().log(logs, start_time)


def _keep(metrics: dict, values) -> None:
    """Append one loss call's metric values (METRIC_NAMES order) to the trainer's metric lists."""
    for name, value in zip(METRIC_NAMES, values, strict=True):
        metrics[name].append(value)
