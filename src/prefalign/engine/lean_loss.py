"""The lean DPO loss as plain tensor functions: TRL 1.16's formulas for reverse-KL DPO, no host syncs.

What LeanDPOTrainer (lean_dpo.py) computes, apart from the trainer: the per-pair losses of the loss
types computed here (`sigmoid`, `hinge`, `ipo`, `sft`, LEAN_LOSS_TYPES), the metrics TRL logs
(METRIC_NAMES) left as tensors, the 4-D causal padding mask that spares transformers its host-side
padding check, the per-token statistics of TRL's fused LM head computed from the model's own logits
(`completion_token_stats`, what torch.compile fuses), and the one length every batch of a compiled
training is padded to. Masked reductions multiply by the mask instead of indexing with it, which on
a GPU would wait for the queued kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The loss types computed here; any other goes through DPOTrainer's own loss.
LEAN_LOSS_TYPES = frozenset({"sigmoid", "hinge", "ipo", "sft"})


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
