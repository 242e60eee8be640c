"""The torch device a run uses: picked from the config's `device`, its attention kernels set, and
the dtype models are loaded in for inference there."""

from __future__ import annotations

import torch

from prefalign.errors import DeviceError

# Whether scaled-dot-product attention may use cuDNN's kernel on CUDA (see use_attention_kernels).
CUDNN_ATTENTION = False


def use_attention_kernels(device: torch.device) -> None:
    """On CUDA, leave cuDNN's attention out of the kernels scaled-dot-product attention picks from
    (flash, memory-efficient and math stay), unless CUDNN_ATTENTION is set.

    torch 2.11 picks cuDNN's kernel first on Hopper GPUs, and cuDNN builds an execution plan for
    every new input shape. Decoding sees a new shape at every step (the cache grows by one position,
    finished rows leave the batch) and scoring, the KL pass and eager training batches one per
    length, so most calls would pay for a plan. The other kernels compute the same attention.
    """
    if device.type == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(CUDNN_ATTENTION)


def pick_device(name: str) -> torch.device:
    """The torch device for a config's `device` (`auto`: CUDA, else MPS, else CPU), set up for use."""
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    elif name == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            "device: cuda was asked for but torch sees no CUDA GPU here; set `device: auto` or `cpu` "
            "(or install a CUDA build of torch)"
        )
    elif name == "mps" and not mps:
        raise DeviceError(
            "device: mps was asked for but torch has no MPS (Apple GPU) device here; set `device: auto` or `cpu`"
        )
    device = torch.device(name)
    use_attention_kernels(device)
    return device


def inference_dtype(device: torch.device) -> torch.dtype:
    # bf16 halves memory traffic on GPUs that support it; on CPU fp32 is both faster and exact.
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32
