"""Where the built-in models live: one directory per spec under `<cache>/models/<name>-<hash>/`, written
under a temporary name and renamed (info.json, written last, marks it done), so a killed build leaves
nothing a later run would read. Shared by the trained builds (`builtin`) and the converted ones
(`packaged`).

Beside it, while a trained build runs: `.<name>-<hash>.partial/`, what it has finished so far (its
tokenizer, each training's latest epoch checkpoint), from which a rerun continues; never read as a build
(no info.json, another name), removed once the build is in place. And `.<name>-<hash>.lock`, held by the
process building it: a second one waits, then finds the build done.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from prefalign.errors import ModelLoadError
from prefalign.models.specs import INFO_FILE, cache_dir
from prefalign.pipeline.store import atomic_path, remove_stale


def build_target(key: str, root: Path | None = None) -> Path:
    """The directory of the build keyed `key` (it may not exist yet); its parent is created."""
    target = (root or cache_dir()) / "models" / key
    if not (target / INFO_FILE).is_file():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ModelLoadError(
                f"prefalign's model cache {target.parent} cannot be created ({e.strerror}); set "
                "PREFALIGN_CACHE to a directory you can write"
            ) from None
    return target


def built(target: Path) -> bool:
    return (target / INFO_FILE).is_file()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def save_build(target: Path, write: Callable[[Path], None], info: dict) -> None:
    """`write(tmp)` the models into a temporary directory, add info.json, and rename it to `target`."""
    # Builds of other specs (or of this one, in another process) may be running in the same cache.
    remove_stale(target.parent, alive=pid_alive)
    if target.exists():  # a concurrent build finished first; ours is identical
        return
    with atomic_path(target) as tmp:
        tmp.mkdir()
        write(tmp)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2))


def partial_dir(target: Path) -> Path:
    """Where the build of `target` keeps what it has finished, until it is in place."""
    return target.with_name(f".{target.name}.partial")


def remove_partial(target: Path) -> None:
    shutil.rmtree(partial_dir(target), ignore_errors=True)


@contextlib.contextmanager
def build_lock(target: Path, log) -> Iterator[None]:
    """Hold the lock of the build of `target` (a file beside it, released when the process ends, however it
    ends); a second process waits for it, saying so, and should then look whether the build is done."""
    with open(target.with_name(f".{target.name}.lock"), "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip()
            log(f"another process{f' ({holder})' if holder else ''} is building {target}: waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        lock.truncate(0)
        lock.write(f"pid {os.getpid()}")
        lock.flush()
        yield
