"""Which process this is among a run's processes, and how the processes meet.

A run is one process, or N processes started by `accelerate launch` or `torchrun` (or by
`prefalign run CONFIG --num-processes N`, which starts them through accelerate). Every process
walks the same plan, and the runner hands each item to all of them (sampling and evaluation: each
generates its own shard of the texts), to the main one alone (pairs, report), or, when training in
`grid` mode, to one of them. They meet at collective calls (`wait`, `all_true`, `gather`) through
accelerate's `PartialState`: gloo on CPU, and a gloo group beside NCCL on GPUs, so a waiting
process holds no GPU stream.

A process that fails exits with its own error; the launcher (torchrun, under accelerate too) then
stops the others, so one failure never leaves the rest waiting. The waits have a long timeout (a
process may wait while another trains whole models).

    accelerate launch --num_processes 2 -m prefalign run CONFIG
    prefalign run CONFIG --num-processes 2
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch

from prefalign.errors import PrefalignError

# How long a process waits for the others at one meeting point before giving up.
WAIT_TIMEOUT = timedelta(hours=24)
# The environment variables a distributed launcher sets; a grid-mode training worker starts without them.
LAUNCH_VARIABLES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_NAME",
    "ROLE_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
)
LAUNCH_PREFIXES = ("TORCHELASTIC_", "ACCELERATE_USE_", "FSDP_", "ACCELERATE_DEEPSPEED")


def launched_processes() -> int:
    """The number of processes the launcher started (1 when prefalign was started directly)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def single_process_environment() -> None:
    """Start a training worker: remove the launcher's variables from its environment, so the
    libraries it uses (the Trainer above all) see a single process, and have Ctrl-C end it quietly
    (its outputs are written atomically; the process that started it says what happened)."""
    import signal

    signal.signal(signal.SIGINT, lambda *_: os._exit(130))
    for name in list(os.environ):
        if name in LAUNCH_VARIABLES or name.startswith(LAUNCH_PREFIXES):
            del os.environ[name]


def exit_with_parent(poll_seconds: float = 0.25) -> None:
    """End this process soon after the process that started it has died (a run killed with SIGKILL or
    SIGTERM, a launcher that crashed), so that no training worker or launched process of a killed run
    goes on holding its GPU, or trains a model beside the rerun that trains it again. A daemon thread
    polls the parent's pid, which changes when a process is orphaned. Exits with code 1; outputs are
    written atomically, so a half-done one is never read (the rerun clears it)."""
    import threading
    import time

    parent = os.getppid()
    if parent <= 1:  # already orphaned, or started by init: nothing to watch
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, name="prefalign-exit-with-parent", daemon=True).start()


def shard_bounds(n: int, index: int, count: int) -> tuple[int, int]:
    """Rows [start, stop) of shard `index` of `count` over n rows: the first n % count shards get one more."""
    base, extra = divmod(n, count)
    start = index * base + min(index, extra)
    return start, start + base + (index < extra)


def shard_seed(seed: int, index: int, count: int) -> int:
    """The sampling seed of shard `index` of `count`: the run's seed itself for one shard (a
    one-process run samples what it always did), else a hash of (seed, index, count)."""
    if count == 1:
        return seed
    digest = hashlib.sha256(f"prefalign-shard/{seed}/{index}/{count}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63 - 1)


class PeerFailed(PrefalignError, RuntimeError):
    """Another process of the run stopped (its own message says why); this one stops too."""


def _collective(call, *args, **kwargs) -> None:
    try:
        call(*args, **kwargs)
    except RuntimeError:  # torch's DistBackendError and gloo's errors: a peer's connection closed
        raise PeerFailed(
            f"process {os.environ.get('RANK', '?')} of {launched_processes()} stops: another process of "
            "this run stopped first (its message says why)"
        ) from None


@dataclass(frozen=True)
class Ranks:
    """This process's place among the run's processes (index 0 is the main process)."""

    index: int = 0
    count: int = 1
    local_index: int = 0  # index among the processes of this machine: its GPU
    group: Any = field(default=None, repr=False, compare=False)  # the torch.distributed group to meet in

    @property
    def main(self) -> bool:
        return self.index == 0

    def shard(self, n: int) -> tuple[int, int]:
        """This process's rows [start, stop) of n."""
        return shard_bounds(n, self.index, self.count)

    def wait(self) -> None:
        """Return once every process has called it."""
        if self.count > 1:
            _collective(torch.distributed.barrier, group=self.group)

    def all_true(self, flag: bool) -> bool:
        """Whether `flag` is true in every process (every process must call it; each gets the answer)."""
        if self.count == 1:
            return bool(flag)
        value = torch.tensor([int(bool(flag))])
        _collective(torch.distributed.all_reduce, value, op=torch.distributed.ReduceOp.MIN, group=self.group)
        return bool(value.item())

    def gather(self, value: int) -> list[int]:
        """Every process's `value` (an int64), in process order."""
        if self.count == 1:
            return [value]
        mine = torch.tensor([value], dtype=torch.int64)
        out = [torch.zeros(1, dtype=torch.int64) for _ in range(self.count)]
        _collective(torch.distributed.all_gather, out, mine, group=self.group)
        return [int(v.item()) for v in out]


def join(device_type: str) -> Ranks:
    """This process's `Ranks`: a single process unless a launcher started several, which then join
    one process group (accelerate's PartialState; `cpu` when the run's device is the CPU, without
    which each CPU process would think it is alone). A launched process ends if its launcher dies."""
    if launched_processes() == 1:
        return Ranks()
    exit_with_parent()
    from accelerate import PartialState

    state = PartialState(cpu=device_type == "cpu", timeout=WAIT_TIMEOUT)
    group = None
    if state.backend != "gloo":  # NCCL: meet in a CPU group, so that waiting holds no GPU stream
        group = _gloo_group()
    return Ranks(state.process_index, state.num_processes, state.local_process_index, group)


_GLOO: list = []


def _gloo_group():
    if not _GLOO:  # new_group is collective: every process creates it once, in the same order
        _GLOO.append(torch.distributed.new_group(backend="gloo", timeout=WAIT_TIMEOUT))
    return _GLOO[0]


def weights_digest(model: torch.nn.Module) -> int:
    """A 63-bit hash of a model's parameters (name, shape, bytes): equal on two processes exactly
    when they hold the same weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().to("cpu").reshape(-1).view(torch.uint8).numpy().tobytes())
    return int.from_bytes(h.digest()[:8], "little") % (2**63 - 1)


def relaunch(prefalign_args: list[str], processes: int) -> int:
    """Run `python -m prefalign PREFALIGN_ARGS` as `processes` processes through `accelerate
    launch` (its torchrun launcher, which starts real processes on CPUs as on GPUs) and wait for
    them; returns the exit code of the first that failed (its message is already printed), 0 when
    all succeed. CPU threads are shared out between the processes unless OMP_NUM_THREADS is set."""
    import logging
    import signal

    import torch.distributed.run  # noqa: F401  (accelerate's launcher: its loggers exist once it is imported)
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if not os.environ.get("PREFALIGN_VERBOSE"):  # the launcher's own notices repeat what the processes say
        for name in list(logging.root.manager.loggerDict):
            if name.startswith("torch.distributed"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    args = launch_command_parser().parse_args(
        [
            "--multi_gpu",
            "--num_processes",
            str(processes),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            "0",
            "-m",
            "prefalign",
            *prefalign_args,
        ]
    )
    try:
        launch_command(args)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        if failure.exitcode != 130:
            print(
                f"prefalign: process {rank} of {processes} failed (exit code {failure.exitcode}); the run stopped",
                file=sys.stderr,
            )
        return failure.exitcode if failure.exitcode > 0 else 1
    except SignalException as e:  # the launcher was stopped (it stops the processes): 128 + the signal's number
        return 130 if e.sigval == signal.SIGINT else 128 + int(e.sigval)
    except KeyboardInterrupt:
        return 130
    return 0
