"""The optimizer's update through torch.compile (with a compiled training step), and the learning
rate read from its schedule rather than from the rate's tensor.
"""

from __future__ import annotations

import types

import torch


def compile_optimizer_step(optimizer: torch.optim.Optimizer, note=print, lr_device: torch.device | None = None) -> bool:
    """Run `optimizer.step` through torch.compile, so inductor fuses the update's passes over every
    parameter into a few kernels (RMSprop, the `seed` recipe's optimizer, has no fused step in torch:
    its foreach update is ~6 passes over all weights and state, 2.7 ms of an H100's step for
    GPT-2-small, each a kernel per chunk of tensors launched from Python). Returns whether it did.

    Each learning rate becomes a 0-d tensor that the scheduler fills in place (torch's LR
    schedulers do so for tensors), so a new value is not a new graph; `initial_lr` is set to the
    number first, so the scheduler's base rate is not that same tensor. The tensor lives on the CPU,
    or on `lr_device`: inductor's lowering copies a CPU scalar that meets GPU tensors to the GPU
    with a blocking copy (a suspect for the one host sync a step of an H100 profile; benchmarks
    compare), and the lean Trainer reads the rate through `scheduled_learning_rate`, never the
    tensor. Call before the scheduler is made. If compiling fails (e.g. no C compiler), the
    eager step runs from then on, with a note; it reads a tensor learning rate as a number.
    """
    if getattr(optimizer, "_compiled_step", False) or any(g.get("fused") for g in optimizer.param_groups):
        return False
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", float(group["lr"]))
        group["lr"] = torch.tensor(float(group["lr"]), device=lr_device)
    eager_step = optimizer.step
    compiled = torch.compile(type(optimizer).step)

    def step(self, closure=None):
        nonlocal compiled
        if compiled is not None:
            try:
                return compiled(self, closure)
            except Exception as e:  # raised while tracing or compiling, before any parameter changed
                note(
                    f"  compiling the optimizer step failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                    "it runs uncompiled"
                )
                compiled = None
        return eager_step(closure)

    optimizer.step = types.MethodType(step, optimizer)
    optimizer._compiled_step = True
    return True


def scheduled_learning_rate(scheduler) -> float | None:
    """The first parameter group's current learning rate as a number, from a LambdaLR's own formula
    (the Trainer's schedules are LambdaLRs; accelerate may wrap them), without reading the rate's
    tensor (which on a GPU would wait for it); None for another kind of scheduler."""
    scheduler = getattr(scheduler, "scheduler", scheduler)
    if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        return None
    return float(scheduler.base_lrs[0] * scheduler.lr_lambdas[0](scheduler.last_epoch))
