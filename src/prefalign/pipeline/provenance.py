"""A run directory's provenance: the config.yaml and models.json its outputs were made with, and
the check that refuses to overwrite another config's outputs without `--update`: outputs that a run which
succeeded made (their keys are recorded in FINISHED), not what a failed run left."""

from __future__ import annotations

import json

import yaml

from prefalign.config.schema import Config
from prefalign.errors import PrefalignError
from prefalign.pipeline.items import Item, Report, Samples
from prefalign.pipeline.services import model_info
from prefalign.pipeline.store import read_json, write_json, write_text

# The keys of the outputs that runs which succeeded made here (their markers' keys): what `--update` guards.
FINISHED = ".finished.json"
# The names of every item's markers (items.py, evidence_items.py): the files that hold an output's key.
MARKER_NAMES = ("*.meta.json", "train.json", "trajectory.json", "run-*.json")


def write_provenance(cfg: Config, items: list[Item] = ()) -> None:
    """config.yaml (as resolved) and models.json (which models, and their quality when known), and the keys
    of `items` (the run's, all on disk now) added to the finished outputs' (FINISHED)."""
    root = cfg.run_path
    finished = finished_keys(root)
    if finished is None:  # the first record: where runs succeeded before it existed, what is on disk is theirs
        finished = keys_on_disk(root) if (root / "config.yaml").exists() else set()
    write_text(root / "config.yaml", yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    write_json(root / "models.json", model_info(cfg))
    made = {key for item in items for _, key in item.markers()}
    if not (made <= finished and (root / FINISHED).exists()):
        write_json(root / FINISHED, {"keys": sorted(finished | made)})


def keys_on_disk(root) -> set[str]:
    """The keys every output's marker in `root` holds."""
    stored = (read_json(path) for pattern in MARKER_NAMES for path in root.rglob(pattern))
    return {meta["key"] for meta in stored if meta is not None and isinstance(meta.get("key"), str)}


def finished_keys(root) -> set[str] | None:
    """The keys of the outputs that runs which succeeded in `root` made, or None where no run recorded them
    (one made before the record existed, or none yet)."""
    stored = read_json(root / FINISHED)
    keys = stored.get("keys") if stored is not None else None
    return set(map(str, keys)) if isinstance(keys, list) else None


def provenance_is_current(cfg: Config) -> bool:
    """Whether config.yaml and models.json already say what `write_provenance(cfg)` would write."""
    root = cfg.run_path
    config_file = root / "config.yaml"
    if (
        not config_file.is_file()
        or config_file.read_bytes() != yaml.safe_dump(cfg.model_dump(), sort_keys=False).encode()
    ):
        return False
    return read_json(root / "models.json") == json.loads(json.dumps(model_info(cfg), default=str))


class OtherConfigsOutputs(PrefalignError):
    """The run directory holds outputs of another config that this run would replace."""

    exit_code = 2


def _flat(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix: tree}
    return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}.{key}" if prefix else key).items()}


def replaced_outputs(cfg: Config, items: list[Item]) -> list[Item]:
    """The items whose output is on disk with another key that a run which succeeded made: what running them
    would overwrite (the report, a summary of whatever is there, is not counted). What a run that failed
    left is no other config's: it is replaced without asking. A directory without the record of finished
    keys (made before it) counts every output as finished once a run succeeded there (its config.yaml)."""
    root = cfg.run_path
    finished = finished_keys(root)
    legacy = finished is None and (root / "config.yaml").exists()

    def finished_there(key) -> bool:
        return legacy or (finished is not None and key in finished)

    def replaces(item: Item) -> bool:
        if isinstance(item, Samples) and (read_json(item.meta) or {}).get("texts_key") == item.texts_key:
            return False  # only reward.terms' weights differ: its texts are kept and re-weighed
        return any(
            (stored := read_json(meta)) is not None and stored.get("key") != key and finished_there(stored.get("key"))
            for meta, key in item.markers()
        )

    return [item for item in items if not isinstance(item, Report) and replaces(item)]


def check_replacements(cfg: Config, items: list[Item]) -> None:
    """Refuse to overwrite another config's outputs: raise OtherConfigsOutputs naming the config
    keys that differ from the run directory's config.yaml and the outputs that would be replaced.
    New outputs (another beta, more evaluation runs) are added without asking."""
    replaced = replaced_outputs(cfg, items)
    if not replaced:
        return
    try:  # the config the outputs were made with, as the last run wrote it (unreadable: nothing to compare)
        stored = yaml.safe_load((cfg.run_path / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        stored = None
    ours, theirs = (
        _flat(json.loads(json.dumps(cfg.model_dump(), default=str))),
        _flat(stored if isinstance(stored, dict) else {}),
    )
    differ = [
        f"{k} ({theirs.get(k)!r} there, {ours.get(k)!r} here)"
        for k in sorted(set(ours) | set(theirs))
        if ours.get(k) != theirs.get(k) and k != "run_dir"
    ]
    names = ", ".join(item.name for item in replaced[:5]) + (
        f" and {len(replaced) - 5} more" if len(replaced) > 5 else ""
    )
    raise OtherConfigsOutputs(
        f"run_dir {str(cfg.run_path)!r} holds outputs of another config that this run would replace ({names}); "
        + (
            "its config.yaml is missing or unreadable, so which keys differ is not known. "
            if not isinstance(stored, dict)
            else f"keys that differ: {'; '.join(differ[:8])}. "
            if differ
            else "no config key differs, so a local model directory or prompt corpus it reads has changed since. "
        )
        + "Set run_dir to another directory to keep both, or rerun with --update to bring this directory to the new "
        "config (only the outputs that depend on the changed keys are redone; those listed are lost)"
    )
