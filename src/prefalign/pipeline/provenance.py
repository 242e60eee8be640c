"""A run directory's provenance: the config.yaml and models.json its outputs were made with, and
the check that refuses to overwrite another config's outputs without `--update`."""

from __future__ import annotations

import json

import yaml

from prefalign.config.schema import Config
from prefalign.errors import PrefalignError
from prefalign.pipeline.items import Item, Report
from prefalign.pipeline.services import model_info
from prefalign.pipeline.store import read_json, write_json, write_text


def write_provenance(cfg: Config) -> None:
    """config.yaml (as resolved) and models.json (which models, and their quality when known)."""
    root = cfg.run_path
    write_text(root / "config.yaml", yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    write_json(root / "models.json", model_info(cfg))


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
    """The items whose output is on disk with another key: what running them would overwrite
    (the report, a summary of whatever is there, is not counted)."""

    def replaces(item: Item) -> bool:
        return any((stored := read_json(meta)) is not None and stored.get("key") != key for meta, key in item.markers())

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
