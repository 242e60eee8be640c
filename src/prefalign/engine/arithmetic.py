"""The float arithmetic a process's compiled code was made under, and forgetting that code when it changes.

A compiled training step records its kernels' choices once: as CUDA graphs, the matrix multiplies
replay exactly as they were captured, TF32 tensor-core kernels or plain fp32 ones. HF's
TrainingArguments switch TF32 through `torch.backends.fp32_precision`, which torch.compile's guards
do not always cover (torch 2.11 on an H100: an fp32 training after a TF32 one in the same process
took 0.1 s for its first step, no compilation, and ran at 18.9-21.7 ms a step against 28-31 ms in a
process of its own: it replayed the TF32 graphs). So before a training compiles its step,
`forget_compiled_code_made_under_other_arithmetic` compares the arithmetic now in force with the
one the process's compiled code was made under, and clears torch.compile's caches if they differ
(the next compiled call compiles afresh, seconds to a minute). Runs that mix precisions in one
process (a grid with `seed` and `default` recipes on a GPU) pay that once per change; others never.
`fp32_switches_restored` puts the TF32 switches back after a training, so what runs next in the
process (evaluation, the next model's training) gets the arithmetic it asks for, not the last one's.
"""

from __future__ import annotations

import contextlib

import torch

# The arithmetic this process's compiled training code was made under (None: nothing compiled yet).
_compiled_under: tuple | None = None


def arithmetic_in_force(autocast_dtype: torch.dtype | None) -> tuple:
    """(autocast dtype, TF32 switches): what a compiled step's kernels depend on beyond its inputs.

    The switches are read through the `fp32_precision` attributes, which never raise; torch's
    legacy `allow_tf32` flags raise once the two APIs have been mixed."""
    switches = tuple(getattr(where, "fp32_precision", None) for where in _switch_places())
    if all(s is None for s in switches):  # a torch before the fp32_precision API
        switches = (torch.get_float32_matmul_precision(),)
    return (str(autocast_dtype), *switches)


def forget_compiled_code_made_under_other_arithmetic(autocast_dtype: torch.dtype | None, note=print) -> bool:
    """Clear torch.compile's caches if this process compiled code under other arithmetic than now's;
    record now's as the one compiled code is made under. Returns whether it cleared them."""
    global _compiled_under
    now = arithmetic_in_force(autocast_dtype)
    changed = _compiled_under is not None and _compiled_under != now
    if changed:
        note(
            f"  precision changed since this process last compiled ({_describe(_compiled_under)} -> "
            f"{_describe(now)}): compiled code is discarded and made again"
        )
        torch._dynamo.reset()
    _compiled_under = now
    return changed


@contextlib.contextmanager
def fp32_switches_restored():
    """Put torch's `fp32_precision` switches (TF32 or IEEE fp32; HF's TrainingArguments set them)
    back as they were on entry, the process-wide one first, then the matmul and cuDNN ones."""
    places = [where for where in _switch_places() if hasattr(where, "fp32_precision")]
    saved = [where.fp32_precision for where in places]
    try:
        yield
    finally:
        for where, value in zip(places, saved, strict=True):
            where.fp32_precision = value


def _switch_places() -> tuple:
    """Where torch keeps its `fp32_precision` switches: process-wide, matrix multiplies, cuDNN."""
    return (torch.backends, torch.backends.cuda.matmul, torch.backends.cudnn)


def _describe(state: tuple) -> str:
    autocast, *switches = state
    return f"autocast {autocast}, fp32 matmul {'/'.join(str(s) for s in switches)}"
