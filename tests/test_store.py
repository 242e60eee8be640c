"""The one atomic-write helper and the cleanup of what killed writers leave behind."""

from __future__ import annotations

import os

import pytest

from prefalign.pipeline.store import atomic_path, read_json, remove_stale, temporary_name, write_json


def test_a_file_appears_only_when_complete(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("partial")
        assert not target.exists() and tmp == temporary_name(target)
    assert target.read_text() == "partial" and list(target.parent.iterdir()) == [target]


def test_a_failed_write_keeps_the_previous_output(tmp_path):
    target = tmp_path / "meta.json"
    write_json(target, {"key": "old"})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("{broken")
            raise RuntimeError("killed mid-write")
    assert read_json(target) == {"key": "old"} and list(tmp_path.iterdir()) == [target]


def test_a_directory_replaces_the_previous_one_whole(tmp_path):
    target = tmp_path / "models" / "m"
    for version in ("one", "two"):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / f"{version}.safetensors").write_text(version)
    assert [p.name for p in target.iterdir()] == ["two.safetensors"]


def test_remove_stale_clears_dead_writers_and_keeps_live_ones(tmp_path):
    dead = tmp_path / "eval" / ".run-00.json.tmp-999999"
    live = tmp_path / f".samples.parquet.tmp-{os.getpid()}"
    folder = tmp_path / "models" / ".m.tmp-999998"
    for path in (dead, live):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    keep = tmp_path / "eval" / "run-00.json"
    keep.write_text("{}")
    remove_stale(tmp_path, alive=lambda pid: pid == os.getpid())
    assert not dead.exists() and not folder.exists() and live.exists() and keep.exists()


def test_damaged_metadata_counts_as_not_done(tmp_path):
    from prefalign.pipeline.store import is_done

    meta = tmp_path / "samples.meta.json"
    for damaged in (b"\xff\xfe\x00garbage", b"[1, 2]", b'{"key": ', b""):
        meta.write_bytes(damaged)
        assert read_json(meta) is None and not is_done(meta, "k")
    write_json(meta, {"key": "k"})
    assert is_done(meta, "k")
