"""TRL's DPOTrainer without a host sync per training step: the same loss, metrics kept on the device.

TRL 1.16 turns about 17 metric values into Python floats (`.item()`) in every loss call, and
selects the SFT loss's tokens with a boolean mask; on a GPU each of those waits for the queued
kernels to finish, so the CPU cannot run ahead and a small model's step is spent waiting. Here
the losses that prefalign's recipes use (`sigmoid`, `hinge`, `ipo`, `sft` and weighted sums of
them, standard reverse-KL DPO) are computed with the same formulas, the metrics stay tensors until
a logging step turns them into floats all at once (and stops training with `TrainingDiverged`
if the logged loss is NaN or infinite), and anything else (other loss types, f-divergences,
`ld_alpha`, WPO weighting, MoE auxiliary losses, PEFT references) goes to TRL's own code.

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
unless it is a fused one already) is compiled too. Gradient clipping stays eager: compiled, it kept
torch's norm eager and stacked the per-parameter norms in ~138 small kernels a step (an H100 profile).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from trl import DPOTrainer

from prefalign.engine.arithmetic import forget_compiled_code_made_under_other_arithmetic
from prefalign.engine.compiled_optimizer import compile_optimizer_step, scheduled_learning_rate
from prefalign.engine.preference_batches import numpy_collator
from prefalign.errors import PrefalignError

# The loss types computed here; any other goes through DPOTrainer's own _compute_loss.
LEAN_LOSS_TYPES = frozenset({"sigmoid", "hinge", "ipo", "sft"})
_NON_MODEL_KEYS = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}
# The batch keys of text-only pairs; a batch with others (images, ...) goes to TRL's own loss.
_TEXT_KEYS = {"input_ids", "attention_mask", *_NON_MODEL_KEYS}


class TrainingDiverged(PrefalignError):
    """The training loss became NaN or infinite (checked at each logging step, where it is on the host anyway)."""


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `mask` is set, without indexing by the mask (which would sync)."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


def sequence_losses(
    loss_type: str,
    beta: float,
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    completion_mask: torch.Tensor,
    chosen_token_logps: torch.Tensor,
    chosen_token_mask: torch.Tensor,
) -> torch.Tensor:
    """Per-pair loss (batch,) of one TRL loss type, as DPOTrainer 1.16 computes it for reverse-KL DPO.

    `completion_mask` (2*batch, seq) marks completion tokens, chosen rows first;
    `chosen_token_logps` / `chosen_token_mask` (batch, seq-1) are the chosen rows' per-token
    log-probs and their shifted completion mask (for `sft`).
    """
    delta = chosen_logratios - rejected_logratios
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * delta)
    if loss_type == "hinge":
        return torch.relu(1 - beta * delta)
    if loss_type == "ipo":
        # Log-ratios averaged per completion token, then the squared distance to 1 / (2 beta).
        chosen_mask, rejected_mask = completion_mask.chunk(2, dim=0)
        chosen_avg = chosen_logratios / chosen_mask.sum(dim=1).clamp(min=1.0)
        rejected_avg = rejected_logratios / rejected_mask.sum(dim=1).clamp(min=1.0)
        return (chosen_avg - rejected_avg - 1 / (2 * beta)) ** 2
    if loss_type == "sft":
        # Cross-entropy of the chosen completions over all their tokens, one scalar for the batch.
        return (-_masked_mean(chosen_token_logps, chosen_token_mask)).expand(chosen_logratios.size(0))
    raise ValueError(f"loss type {loss_type!r} is not one of {sorted(LEAN_LOSS_TYPES)}")


def causal_padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(batch, 1, seq, seq) boolean mask, True where a query may attend a key: causal, real keys only.

    Built on the device, so nothing is read back; transformers passes a 4-D mask through unchanged.
    """
    seq = attention_mask.shape[1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=attention_mask.device).tril()
    return causal[None, None] & attention_mask[:, None, None, :].bool()


def four_d_mask_works(model) -> bool:
    """Whether `model` (SDPA attention) gives the same logits with causal_padding_mask's 4-D mask as
    with the 2-D mask, on a small right-padded batch. Not every architecture takes a 4-D mask: OPT
    derives its positions from the 2-D mask and fails on a 4-D one. Run once per training, in eval
    mode, without autocast or gradients."""
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    device = next(model.parameters()).device
    ids = (torch.arange(12, device=device).reshape(2, 6) % max(1, model.config.vocab_size - 3)) + 3
    mask = torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0]], device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            two_d = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            four_d = model(input_ids=ids, attention_mask=causal_padding_mask(mask), use_cache=False).logits
        real = mask.bool()
        return bool(torch.allclose(two_d[real].float(), four_d[real].float(), atol=1e-4, rtol=1e-3))
    except Exception:  # the architecture rejects a 4-D mask
        return False
    finally:
        model.train(was_training)


def completion_token_stats(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor, four_d_mask: bool
) -> tuple[torch.Tensor, ...]:
    """What TRL's fused head returns for the predicted positions, from the model's own logits.

    Inputs (rows, seq); outputs (rows, seq-1), position t predicting token t+1, all 0 (False) where
    that token is not a completion token: its log-prob (with gradient), and, detached, the entropy
    of the distribution, the mean logit and whether the token is the most likely one. Plain tensor
    code on full-vocabulary logits, so torch.compile can fuse it with the model and capture it.
    """
    if four_d_mask:
        attention_mask = causal_padding_mask(attention_mask)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1].float()
    targets = input_ids[:, 1:]
    mask = completion_mask[:, 1:].to(logits.dtype)
    log_norm = torch.logsumexp(logits, dim=-1)  # (rows, seq-1)
    token_logps = (logits.gather(-1, targets[..., None]).squeeze(-1) - log_norm) * mask
    detached, log_norm = logits.detach(), log_norm.detach()
    probs = (detached - log_norm[..., None]).exp()
    entropy = (log_norm - (probs * detached).sum(-1)) * mask  # -sum p log p = logsumexp - sum p * logit
    mean_logits = detached.mean(-1) * mask
    is_top1 = (detached.argmax(-1) == targets) & (mask > 0)
    return token_logps, entropy, mean_logits, is_top1


# The metrics a lean loss call adds, as TRL names them, in loss_and_metrics' order.
METRIC_NAMES = (
    "entropy",
    "logits/chosen",
    "logits/rejected",
    "mean_token_accuracy",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)


def _same(values: torch.Tensor) -> torch.Tensor:
    return values


def loss_and_metrics(
    per_token_logps,
    entropy,
    mean_logits,
    is_top1,
    completion_mask,
    ref_chosen_logps,
    ref_rejected_logps,
    beta: float,
    loss_types,
    loss_weights,
    gather=_same,
    gather_for_metrics=_same,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(the batch's loss, its metrics in METRIC_NAMES order) from completion_token_stats' outputs
    ((2*batch, seq-1), chosen rows first) and the reference's sequence log-probs (batch,) each.

    The formulas of TRL 1.16's DPOTrainer for reverse-KL DPO. `gather` / `gather_for_metrics`: the
    accelerator's, so that with several processes the metrics cover every process's pairs (token
    averages are gathered as sums and counts, as TRL does: processes pad to different lengths).
    """
    shift_mask = completion_mask[..., 1:]  # (2*batch, seq-1): the tokens that are predicted
    chosen_logps, rejected_logps = per_token_logps.sum(dim=1).chunk(2, dim=0)
    chosen_logratios = chosen_logps - ref_chosen_logps
    rejected_logratios = rejected_logps - ref_rejected_logps
    chosen_token_logps = per_token_logps.chunk(2, dim=0)[0]
    chosen_mask, rejected_mask = shift_mask.chunk(2, dim=0)
    loss = 0.0
    for loss_type, weight in zip(loss_types, loss_weights, strict=True):
        per_pair = sequence_losses(
            loss_type, beta, chosen_logratios, rejected_logratios, completion_mask, chosen_token_logps, chosen_mask
        )
        loss = loss + per_pair.mean() * weight

    def token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return gather_for_metrics((values * mask).sum()).sum() / gather_for_metrics(mask.sum()).sum().clamp(min=1)

    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    chosen_mean_logits, rejected_mean_logits = mean_logits.detach().chunk(2, dim=0)
    metrics = [
        token_mean(entropy.detach(), shift_mask),
        token_mean(chosen_mean_logits, chosen_mask),
        token_mean(rejected_mean_logits, rejected_mask),
        token_mean(is_top1.chunk(2, dim=0)[0].float(), chosen_mask),
        gather(chosen_rewards).mean(),
        gather(rejected_rewards).mean(),
        gather((chosen_rewards > rejected_rewards).float()).mean(),
        gather(chosen_rewards - rejected_rewards).mean(),
        gather(chosen_logps.detach()).mean(),
        gather(rejected_logps.detach()).mean(),
    ]
    return loss, metrics


def whole_training_loss(
    model,
    input_ids,
    attention_mask,
    completion_mask,
    four_d_mask: bool,
    ref_chosen_logps,
    ref_rejected_logps,
    beta: float,
    loss_types: tuple,
    loss_weights: tuple,
):
    """completion_token_stats then loss_and_metrics for one process: (loss, metrics stacked (10,)), one
    function for torch.compile, so the loss, the metrics and their backward are in the graphs too."""
    stats = completion_token_stats(model, input_ids, attention_mask, completion_mask, four_d_mask)
    loss, metrics = loss_and_metrics(
        *stats, completion_mask, ref_chosen_logps, ref_rejected_logps, beta, loss_types, loss_weights
    )
    return loss, torch.stack([m.float() for m in metrics])


def fixed_pad_length(dataset, max_length: int | None) -> int:
    """The longest prompt + completion of a tokenized preference dataset (TRL's `prompt_ids`,
    `chosen_ids`, `rejected_ids`), at most `max_length`: padding every batch to it keeps one shape."""
    prompts = [len(ids) for ids in dataset["prompt_ids"]]
    longest = max(
        (p + max(len(c), len(r)) for p, c, r in zip(prompts, dataset["chosen_ids"], dataset["rejected_ids"])), default=1
    )
    return min(longest, max_length) if max_length else longest


@contextlib.contextmanager
def trl_head_positions(compact):
    """While inside, TRL 1.16's fused LM head projects only the labelled (completion) positions on
    the devices where `compact(device, trl_choice)` is true, and every position elsewhere.

    TRL's own choice: only on CUDA, where it gathers the labelled positions with a boolean mask (a
    host sync). The results are the same either way; only the work and the syncs differ.
    """
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if original is None:  # another TRL version: leave it alone
        yield
        return
    trl_utils._use_triton = lambda device: compact(device, original(device))
    try:
        yield
    finally:
        trl_utils._use_triton = original


class LeanDPOTrainer(DPOTrainer):
    """DPOTrainer whose training steps queue GPU work without waiting on it (see the module docstring)."""

    # Where to use the 4-D attention mask and the every-position LM head (see the module docstring):
    # "gpu" (the default), "always" (tests compare them with TRL's on CPU) or "never".
    sync_free = "gpu"
    # One of recipes.OWN_CHOICES["compile_step"] but "auto" (train_one resolves it and pads every batch
    # to one length first).
    compile_step = "eager"
    # torch.compile's backend: "inductor" (fused Triton kernels; with "graphs", CUDA graphs around
    # them) or "cudagraphs" (CUDA graphs of the eager kernels, nothing generated; benchmarks compare).
    compile_backend = "inductor"
    _compiled = None  # (the compiled function, the batch rows it was compiled for, whether it is the whole loss)
    _four_d_mask = None  # whether the policy takes the 4-D mask (four_d_mask_works; checked where it would be used)
    compile_optimizer = True  # with a compiled step, compile the optimizer's update too (benchmarks compare)
    lr_on_device = (
        False  # the compiled update's learning rates on the parameters' device, not the CPU (benchmarks compare)
    )
    note = staticmethod(print)  # where a message for the user goes (train_one: the run's log)

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

    def _compute_loss(self, model, inputs, return_outputs):
        if return_outputs or not self.lean() or not set(inputs) <= _TEXT_KEYS:
            return super()._compute_loss(model, inputs, return_outputs)
        mode = "train" if self.model.training else "eval"
        model_kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}
        model_kwargs["use_cache"] = False
        completion_mask = inputs["completion_mask"]  # (2*batch, seq), chosen rows first
        shift_mask = completion_mask[..., 1:]  # (2*batch, seq-1): the tokens that are predicted
        seq_len = shift_mask.size(1)
        compiled, whole = self.compiled_loss(inputs["input_ids"].shape[0])
        on_gpu = inputs["input_ids"].device.type == "cuda"
        sync_free = self.sync_free == "always" or (self.sync_free == "gpu" and on_gpu)
        if self._four_d_mask is None and (compiled is not None or sync_free):  # only where a 4-D mask would be used
            self._four_d_mask = four_d_mask_works(self.accelerator.unwrap_model(model))
        four_d_mask = bool(self._four_d_mask)

        def reference_logps() -> tuple[torch.Tensor, torch.Tensor]:  # (batch,) each, chosen and rejected
            if self.precompute_ref_logps:
                return inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
            return self.compute_ref_log_probs(self.ref_model, inputs)

        metrics = self._metrics[mode]
        if compiled is not None:
            if self.compile_step == "graphs":
                torch.compiler.cudagraph_mark_step_begin()  # a new training step: the last one's buffers are free
            args = (model, inputs["input_ids"], inputs["attention_mask"], completion_mask, four_d_mask)
            try:
                if whole:
                    loss, values = compiled(
                        *args, *reference_logps(), self.beta, tuple(self.loss_types), tuple(self.loss_weights)
                    )
                    # Kept until the next logging step; CUDA graphs overwrite their outputs at the next replay.
                    for name, value in zip(METRIC_NAMES, values.detach().clone().unbind(), strict=True):
                        metrics[name].append(value)
                    return loss
                stats = compiled(*args)
            except Exception as e:  # e.g. no C compiler for Triton: the step stays correct, only slower
                if self.state.global_step > 0:
                    raise
                self.note(
                    f"  compiling the training step failed ({type(e).__name__}: {str(e)[:300]}); "
                    f"training goes on without compilation, as with train.dpo.compile_step: eager"
                )
                self.compile_step, compiled = "eager", None
        if compiled is None:
            labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
            if sync_free and four_d_mask:
                model_kwargs["attention_mask"] = causal_padding_mask(model_kwargs["attention_mask"])
            every_position = trl_head_positions(lambda device, trl_choice: False)  # no boolean gather, no sync
            with every_position if sync_free else contextlib.nullcontext():
                outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
            # (2*batch, seq-1) each, 0 outside completions
            stats = (
                outputs.log_probs[:, -seq_len:],
                outputs.entropy[:, -seq_len:],
                outputs.mean_logits[:, -seq_len:],
                outputs.is_top1[:, -seq_len:],
            )
        # Metrics left on the device until `log` (num_tokens, a running count, is not kept).
        loss, values = loss_and_metrics(
            *stats,
            completion_mask,
            *reference_logps(),
            self.beta,
            self.loss_types,
            self.loss_weights,
            self.accelerator.gather,
            self.accelerator.gather_for_metrics,
        )
        for name, value in zip(METRIC_NAMES, values, strict=True):
            metrics[name].append(value)
        return loss

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
        # Read every step: from the schedule's formula rather than a rate tensor that may be on the GPU.
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

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # The one host sync per logging step: every metric tensor since the last log, copied at once.
        pending = [
            (values, key)
            for values in self._metrics.values()
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
