"""Changes to a loaded model that make it faster and leave its outputs as they were (to float
rounding): GPT-2's tanh GELU as one kernel, and on a GPU an LM head padded to a multiple of 64 rows.
"""

from __future__ import annotations

import torch


def fuse_activations(model: torch.nn.Module) -> torch.nn.Module:
    """Swap GPT-2's tanh-approximate GELU, written as ~8 elementwise tensor ops (`gelu_new`, `gelu_fast`),
    for torch's one-kernel version of the same formula (transformers' `GELUTanh`).

    On a GPU every elementwise op is a kernel launch and a trip through memory, in each layer of every
    forward and backward. The outputs agree to float rounding; the weights and the saved config are
    unchanged. Returns the model.
    """
    from transformers.activations import FastGELUActivation, GELUTanh, NewGELUActivation

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) in (NewGELUActivation, FastGELUActivation):
                setattr(module, name, GELUTanh())
    return model


class _PaddedHead(torch.nn.Module):
    """An LM head whose weight has zero rows appended up to `padded` outputs; the extra logits are cut off
    (the logits are a view, `vocab` wide, of a `padded`-wide tensor)."""

    def __init__(self, head: torch.nn.Linear, padded: int):
        super().__init__()
        vocab, hidden = head.weight.shape
        self.vocab = vocab
        self.weight = torch.nn.Parameter(
            torch.cat([head.weight.detach(), head.weight.new_zeros(padded - vocab, hidden)]), requires_grad=False
        )
        bias = None if head.bias is None else torch.cat([head.bias.detach(), head.bias.new_zeros(padded - vocab)])
        self.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(hidden, self.weight, self.bias)[..., : self.vocab]


def pad_output_vocabulary(model, multiple: int = 64):
    """Give an inference model's LM head a multiple of `multiple` outputs (zero rows added, their logits
    cut off again), so its matrix product is aligned for the GPU's fast kernels; returns the model.

    GPT-2's 50,257 outputs are not a multiple of 8: on an H200 the head's product in decoding ran on
    a slow fallback kernel (benchmarks/RESULTS.md, profile). Only for models that are not trained:
    the padded weight is a copy, no longer tied to the input embeddings. Heads that are not a plain
    linear layer, and vocabularies already aligned, are left alone.
    """
    head = model.get_output_embeddings()
    if type(head) is not torch.nn.Linear or head.weight.shape[0] % multiple == 0:
        return model
    vocab = head.weight.shape[0]
    model.set_output_embeddings(_PaddedHead(head, -(-vocab // multiple) * multiple))
    return model
