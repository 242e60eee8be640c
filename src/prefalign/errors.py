"""Failures a user can act on, and the one line each is said in.

Every error prefalign raises for a user's input or machine derives from `PrefalignError`: the CLI
prints its message after `prefalign: ` and exits with its `exit_code`, 2 when it is found before
any work (a bad config, a path that does not exist) and 1 when a stage meets it. Anything else that
escapes is a bug, shown with its traceback. Errors that more than one package raises live here; a
module's own errors (`PairError`, `RunLocked`, ...) live in that module and derive from the base.

Failures of the machine rather than of the input (a full disk, no memory, a missing optional
package) come from other libraries as their own exception types: `outside_problem` turns them into
the line to say.
"""

from __future__ import annotations

import errno
import re


class PrefalignError(Exception):
    """A failure the user can act on; the message says what is wrong and what to do."""

    exit_code = 1  # 2: found before any work; 1: found during it
    lead = ""  # said before the message, e.g. "invalid config: "

    def said(self) -> str:
        return f"{self.lead}{self}"


class CorpusError(PrefalignError, ValueError):
    """A corpus that cannot be read; the message says which source and what to do about it."""


class CorpusPathError(CorpusError):
    """A corpus given as a local path that does not exist or is no supported file type (found while
    planning, before any work)."""

    exit_code = 2


class ModelLoadError(PrefalignError):
    """A model that cannot be loaded."""


class ModelPathError(ModelLoadError):
    """A model reference that is a local path with no model directory behind it, or a local model whose own
    files already refuse the run's config (check_saved_model); found before any work."""

    exit_code = 2


class DeviceError(PrefalignError):
    """The config's `device` is not on this machine; found before any work."""

    exit_code = 2


class TrainingDiverged(PrefalignError):
    """The training loss became NaN or infinite (checked at each logging step, where it is on the host anyway)."""


RESUME = "finished outputs are kept, rerun the same command to resume"

# Failures of the machine rather than of prefalign or the input: said in one line, exit 1.
WRITE_ERRORS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the file system is read-only",
}


def _rust_errno(e: BaseException) -> int | None:
    """The errno a Rust I/O error (safetensors) names in its message (`... (os error 28)`), or None."""
    found = re.search(r"\(os error (\d+)\)", str(e))
    return int(found[1]) if found else None


def write_problem(e: BaseException) -> str | None:
    """A message for an output that could not be written (disk full, no permission), else None."""
    if isinstance(e, OSError) and e.errno in WRITE_ERRORS:
        what = f"cannot write {e.filename}" if e.filename else "cannot write an output"
        why = WRITE_ERRORS[e.errno]
    elif type(e).__name__ == "SafetensorError" and (
        "StorageFull" in str(e) or "code: 28" in str(e) or _rust_errno(e) in WRITE_ERRORS
    ):
        # safetensors' Rust writer has one exception type for every failure; its errno is in the text.
        what, why = "cannot save a model's weights", WRITE_ERRORS[_rust_errno(e) or errno.ENOSPC]
    else:
        return None
    needed = getattr(e, "bytes_needed", None)
    if needed and why == WRITE_ERRORS[errno.ENOSPC]:
        why += f" (the model's weights alone need {needed / 2**20:,.1f} MiB)"
    return (
        f"{what}: {why}. Free space or fix the permissions, then rerun the same command: finished outputs are "
        "kept, and a half-written one is never read (outputs are written under a temporary name, then renamed)"
    )


# What torch's CPU and MPS allocators say when an allocation fails: they raise a plain RuntimeError.
OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "Cannot allocate memory")


def _out_of_memory(e: BaseException) -> bool:
    import torch

    if isinstance(e, (MemoryError, torch.OutOfMemoryError)):  # Python's, and the CUDA allocator's
        return True
    return isinstance(e, RuntimeError) and any(s in str(e) for s in OUT_OF_MEMORY)


def memory_problem(e: BaseException) -> str | None:
    """A message for a run that ran out of memory (the settings ask for more than the machine has), else None."""
    if not _out_of_memory(e):
        return None
    lines = str(e).splitlines()
    said = next((line for line in lines if any(s in line for s in OUT_OF_MEMORY)), lines[0] if lines else "")
    return (
        f"ran out of memory ({said.strip()[:200] or type(e).__name__}). Ask for less at once: `sampling.batch_size` (sampling and "
        "evaluation; empty sizes it from free memory), `reward.batch_size` (the classifier's batches), "
        "`train.dpo.per_device_train_batch_size` with `train.dpo.gradient_accumulation_steps` to keep the "
        "recipe's batch, fewer `train.side_by_side` workers (each holds its own models), or `train.lora`; "
        f"{RESUME}"
    )


def package_problem(e: BaseException) -> str | None:
    """A message for a setting whose optional package is not installed (`use_liger_kernel`,
    `deepspeed`, ...: transformers raises an ImportError naming it), else None. An ImportError of
    prefalign's own code (no install hint) stays a bug."""
    said = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if not isinstance(e, ImportError) or not ("pip install" in said or "distribution was not found" in said):
        return None
    return f"a package the settings need is not installed: {said[:300]}. Install it or drop the setting; {RESUME}"


def outside_problem(e: BaseException) -> str | None:
    """The line to say for a failure of the machine or its installation (exit 1), or None for a bug."""
    return write_problem(e) or memory_problem(e) or package_problem(e)
