"""What the tests share: running the real command, waiting on a condition, the processes a test
starts (each ends with its test, or when pytest is interrupted), and the tiny preset's model names."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

STRATEGIES = ["random", "margin", "threshold"]
MODELS = [f"{s}-{loss}-beta0.1-default" for s in STRATEGIES for loss in ("sigmoid", "hinge")]


def wait_until(condition, timeout: float = 120.0, what: str = "the condition", every: float = 0.05):
    """Call `condition()` until it returns something true, and return that; after `timeout` seconds
    the test fails, naming `what`. For anything that takes a while: a fixed sleep is a guess that a
    loaded machine proves wrong, a deadline this generous is only reached when the thing never happens.
    `condition` may raise (an assertion that the process waited on still runs) to fail at once."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {what}")
        time.sleep(every)


# ---- processes -------------------------------------------------------------------------------------
# Every process a test starts goes through `start` (or `started`, `run`, `prefalign`): in a session of
# its own, so that a signal meant for pytest (Ctrl-C) is pytest's to handle, and `stop` ends the
# process with everything it started, a descendant that made a process group of its own (as `timeout`
# in benchmarks/gpu_check.sh does) or a session of its own included. `started` and `run` stop theirs
# when they return or raise (KeyboardInterrupt included); conftest stops any left when pytest ends.

_STARTED: dict[int, subprocess.Popen] = {}


def start(args, **popen) -> subprocess.Popen:
    """subprocess.Popen(args, **popen) in a session of its own, stopped at the latest when pytest ends."""
    proc = subprocess.Popen(args, start_new_session=True, **popen)
    _STARTED[proc.pid] = proc
    return proc


@contextlib.contextmanager
def started(args, **popen):
    """`start(args, **popen)`, stopped (with everything it started) when the block ends."""
    proc = start(args, **popen)
    try:
        yield proc
    finally:
        stop(proc)


def run(args, timeout: float = 600, check: bool = False, **popen) -> subprocess.CompletedProcess:
    """subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=check) for a process
    started by `start`: whatever it started is stopped when it ends, times out or is interrupted."""
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **popen}
    with started(args, **popen) as proc:
        out, err = proc.communicate(timeout=timeout)
    if check and proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, args, out, err)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def processes() -> dict[int, tuple[str, int, int]]:
    """pid -> (state, parent pid, session id) of every process (Linux's /proc; {} without it)."""
    table = {}
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:  # ended meanwhile
                    continue
                table[int(entry.name)] = (fields[0], int(fields[1]), int(fields[3]))
    return table


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, ended but not yet reaped, counts as ended)."""
    if not os.path.isdir("/proc"):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:  # no such process
        return False


def in_session(session: int) -> set[int]:
    """The processes of session `session` that still run."""
    return {pid for pid, (state, _, sid) in processes().items() if sid == session and state != "Z"}


def family(proc: subprocess.Popen, also=()) -> set[int]:
    """What still runs of `proc`'s session (its id is proc's pid: the kernel reuses no session's id)
    and of the descendants of proc (while proc is not reaped, its pid is not reused) and of `also`."""
    table = processes()
    members = {pid for pid, (state, _, sid) in table.items() if sid == proc.pid and state != "Z"}
    children: dict[int, list[int]] = {}
    for pid, (_, parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    todo = [*also, *([proc.pid] if proc.returncode is None else [])]
    seen = set()
    while todo:
        pid = todo.pop()
        seen.add(pid)
        if pid in table and table[pid][0] != "Z":
            members.add(pid)
        todo += [child for child in children.get(pid, []) if child not in seen]
    return members


def stop(proc: subprocess.Popen) -> None:
    """SIGKILL `proc` and every process it started that still runs (`family`), then reap proc. They
    are stopped (SIGSTOP) first, as found, so that none starts another meanwhile or, killed, leaves
    its children to init before they were found."""
    found: set[int] = set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        new = family(proc, found) - found
        if not new:
            break
        for pid in new:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGSTOP)
        found |= new
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # without /proc: its process group at least
    for pid in found:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    _STARTED.pop(proc.pid, None)  # (not before: a stop that a second Ctrl-C interrupted is done again at the end)


def stop_all() -> None:
    """Stop every process `start` started that is not stopped yet (conftest: when pytest ends)."""
    for proc in list(_STARTED.values()):
        stop(proc)


def terminal_sigint() -> None:
    """In the child (`start(..., preexec_fn=terminal_sigint)`): SIGINT as a terminal delivers it, even
    when the tests run in a background job (which starts with SIGINT ignored, and a Python started so
    never raises KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def prefalign(*args, cwd=None, check=True, env=None) -> subprocess.CompletedProcess:
    """`python -m prefalign.cli ARGS` in a subprocess; with `check`, its exit code must be 0."""
    proc = run([sys.executable, "-m", "prefalign.cli", *args], cwd=cwd, env={**os.environ, **(env or {})})
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def kill_after_a_checkpoint(args: list[str], checkpoints: Path) -> None:
    """Start `python -m prefalign.cli ARGS` and SIGKILL it with everything it started once a trainer
    checkpoint is complete under `checkpoints` (the model's `.NAME.checkpoints` folder)."""
    cmd = [sys.executable, "-m", "prefalign.cli", *args]
    with started(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:

        def checkpointed():
            assert proc.poll() is None, "training finished before a checkpoint was seen"
            return list(checkpoints.glob("checkpoint-*/trainer_state.json"))

        wait_until(checkpointed, timeout=300, what=f"a checkpoint under {checkpoints}")
