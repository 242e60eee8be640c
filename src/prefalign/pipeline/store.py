"""Run-directory bookkeeping shared by every stage: cache keys, metadata and atomic writes.

An output is current when its metadata JSON exists and holds the key of the plan item that wrote
it, a hash of every setting and upstream key the item depends on (see items.py). Every file and
directory is written under a temporary name (`.NAME.tmp-PID`) by `atomic_path` and renamed into
place when complete, and metadata is written last, so a run killed at any moment leaves either a
finished output or one the next run redoes; `remove_stale` clears the temporary names it leaves.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefalign.errors import PrefalignError

TEMPORARY_MARK = ".tmp-"  # every temporary name is `.<final name>.tmp-<pid>`


def key_of(*parts: Any) -> str:
    """A 16-hex-digit hash of `parts` (JSON with sorted keys; anything else through `str`)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def read_json(path: Path) -> dict | None:
    """The JSON object at `path`, or None when it is missing, unreadable or not an object (a file
    damaged by hand or by a disk: the output it describes then counts as not done)."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def is_done(meta_path: Path, key: str) -> bool:
    """Whether the metadata at `meta_path` records `key`."""
    meta = read_json(meta_path)
    return meta is not None and meta.get("key") == key


def temporary_name(path: Path) -> Path:
    """The temporary sibling `path` is written under before it is renamed into place."""
    return path.with_name(f".{path.name}{TEMPORARY_MARK}{os.getpid()}")


def scratch_beside(path: Path, label: str) -> Path:
    """A working file or folder beside `path` that several processes of one run share (a sample
    shard, the pairs of a model trained together): a temporary name without a pid, so every
    process finds it, and `remove_stale` clears what a killed run leaves."""
    return path.with_name(f".{path.name}.{label}{TEMPORARY_MARK}shared")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write a file or directory at; on success it replaces `path`.

    On an exception the temporary output is removed and `path` is left as it was. A directory that
    already exists at `path` is removed just before the rename (a directory cannot be renamed over
    a non-empty one), so between the two a reader sees no output, never a partial one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    _remove(tmp)
    try:
        yield tmp
        if tmp.is_dir() and path.exists():
            _remove(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            _remove(tmp)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, default=str))


class DamagedOutput(PrefalignError, RuntimeError):
    """An output of the run that is on disk (its metadata says so) but cannot be read: damaged, or
    removed by hand, since it was written."""


def read_parquet(path: Path, columns: list[str] | None = None):
    """pandas.read_parquet of an output of the run; DamagedOutput, naming the file, when it cannot
    be read. Deleting the file makes the next run write it again (the item is then not current)."""
    import pandas as pd

    try:
        return pd.read_parquet(path, columns=columns)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError; a missing file an OSError
        reason = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise DamagedOutput(
            f"{path} cannot be read ({reason}); delete it and rerun the same command: prefalign "
            "makes it again (and whatever was made from it stays as it is)"
        ) from None


def write_parquet(df, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def remove_stale(root: Path, alive=lambda pid: False) -> None:
    """Remove temporary outputs under `root` left by killed processes (`alive(pid)` keeps a live writer's)."""
    if not Path(root).exists():
        return
    for tmp in Path(root).rglob(f".*{TEMPORARY_MARK}*"):
        pid = tmp.name.rsplit(TEMPORARY_MARK, 1)[1]
        if not (pid.isdigit() and alive(int(pid))):
            _remove(tmp)
