"""Reading a config: YAML file, preset or mapping -> overrides -> validated `Config`.

A config is read from a path, from a preset shipped in `prefalign/presets/NAME.yaml` or (from
Python) from a mapping; `--set a.b=value` overrides apply on top (values are parsed as YAML, so
`--set train.betas=[0.1,1]` works), or from Python a mapping of dotted keys to values taken as
they are. Any unknown key, wrong type or impossible value raises `ConfigError`, which the CLI turns
into exit code 2 with the offending key named (and the closest valid key for a typo); the Python
API (prefalign/api.py) raises it with the same message.

Each preset's first line is `# description: WHAT IT RUNS (TIME ON 2 CPU CORES)`: what `prefalign
presets` prints (`preset_descriptions`).
"""

from __future__ import annotations

import copy
import difflib
import importlib.resources
import os
import re
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from prefalign.config.schema import Config
from prefalign.config.words import ERROR_WORDS, joined, shown
from prefalign.errors import PrefalignError


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-4` as a float (YAML 1.1 insists on `1.0e-4`), and refuses a key
    given twice in one mapping (PyYAML keeps the last silently: a second `train:` section would drop
    the first one's settings)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: its keys may be given again
                    continue
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, typing.Hashable):  # PyYAML's own construction refuses it
                    continue
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping",
                        node.start_mark,
                        f"found the key {key!r} a second time (first on line {seen[key] + 1}); "
                        "give each key once (merge the two)",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _yaml(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


class ConfigError(PrefalignError):
    """A config that cannot run (found before any work)."""

    exit_code = 2


# --------------------------------------------------------------------------------------------
# Loading


def preset_names() -> list[str]:
    files = importlib.resources.files("prefalign") / "presets"
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".yaml"))


DESCRIPTION = "# description: "


def preset_descriptions() -> dict[str, str]:
    """Each preset's one line (its file's first line, `# description: ...`); "" for a preset without one."""
    presets = importlib.resources.files("prefalign") / "presets"
    first = {name: (presets / f"{name}.yaml").read_text("utf-8").partition("\n")[0] for name in preset_names()}
    return {
        name: line.removeprefix(DESCRIPTION).strip() if line.startswith(DESCRIPTION) else ""
        for name, line in first.items()
    }


def _read_yaml(source: str) -> tuple[dict[str, Any], str]:
    """Return the raw mapping and a default name for a path or a preset name."""
    path = Path(source)
    if path.is_file():
        from prefalign.data.files import not_utf8

        problem = not_utf8(path)
        if problem:
            raise ConfigError(f"{source}, {problem}: a config is a YAML text file in UTF-8")
        text, default_name = path.read_text(encoding="utf-8"), path.stem
    elif source in preset_names():
        text = (importlib.resources.files("prefalign") / "presets" / f"{source}.yaml").read_text("utf-8")
        default_name = source
    else:
        raise ConfigError(f"no config file or preset named {source!r} (presets: {', '.join(preset_names())})")
    try:
        raw = _yaml(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(raw).__name__}")
    return raw, default_name


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one `--set a.b.c=value` to the raw mapping (value parsed as YAML)."""
    key, sep, value = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment!r}: expected key.path=value")
    key = key.strip()
    try:
        parsed = _yaml(value) if value.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: value is not valid YAML: {e}") from None
    set_value(raw, key, parsed, f"--set {key}")


def set_value(raw: dict[str, Any], key: str, value: Any, said: str | None = None) -> None:
    """Set the dotted `key` (`a.b.c`) of the raw mapping to `value`, creating missing sections;
    `said` names the override in an error (default: `override 'a.b.c'`)."""
    said = said or f"override {key!r}"
    if not isinstance(key, str) or not key.strip() or "" in key.strip().split("."):
        raise ConfigError(f"{said}: expected a dotted key such as train.betas")
    parts = key.strip().split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{said}: `{'.'.join(parts[: i + 1])}` is not a section")
        node = child
    node[parts[-1]] = value


_UNION_TAG = re.compile(r"^(str|int|float|bool|dict\[.*\]|list\[.*\]|[A-Z]\w*|function-\w+\[.*\])$")


def _format_error(err: ValidationError) -> str:
    lines: dict[str, list[str]] = {}
    wrong_type: dict[str, tuple[Any, list[str]]] = {}  # loc -> (the value, the types it is not, in words)
    for e in err.errors():
        # Union members add their own tag to the location (`losses.0.str`, `losses.0.LossMix`): drop it.
        loc_parts = tuple(p for p in e["loc"] if not (isinstance(p, str) and _UNION_TAG.match(p)))
        loc = ".".join(str(p) for p in loc_parts)
        msgs = lines.setdefault(loc, [])
        if e["type"] in ERROR_WORDS:
            wrong_type.setdefault(loc, (e.get("input"), []))[1].append(ERROR_WORDS[e["type"]])
        elif e["type"] == "extra_forbidden":
            parent = _model_at(loc_parts[:-1])
            hint = difflib.get_close_matches(str(loc_parts[-1]), list(parent.model_fields), n=1) if parent else []
            msgs.append(
                "unknown key"
                + (f" (did you mean `{'.'.join(map(str, loc_parts[:-1] + (hint[0],)))}`?)" if hint else "")
            )
        else:
            msgs.append(e["msg"].removeprefix("Value error, "))
    out = []
    for loc, msgs in lines.items():
        # A value that fails every member of a union: keep the member's real complaint, else say the
        # types it may have in words ("'fast' is not a number").
        real = [m for m in msgs if not m.startswith("Input should be an instance")]
        if not real and loc in wrong_type:
            value, words = wrong_type[loc]
            real = [f"{shown(value)} is not {joined(words)}"]
        out += [f"  `{loc}`: {m}" if loc else f"  {m}" for m in dict.fromkeys(real or msgs)]
    return "invalid config:\n" + "\n".join(out)


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


Source = str | os.PathLike | Mapping[str, Any] | Config
Overrides = Iterable[str] | Mapping[str, Any] | None


def load_config(source: Source, overrides: Overrides = ()) -> Config:
    """Read, override and validate a config. Raises ConfigError naming the bad key.

    `source`: a YAML path, a preset name, a mapping of sections (copied, not changed) or a Config;
    `overrides`: `--set`'s `key.path=value` strings (values parsed as YAML) or a mapping of dotted
    keys to values (taken as they are)."""
    if isinstance(source, Config):
        raw = source.model_dump()
    elif isinstance(source, Mapping):
        raw = copy.deepcopy(dict(source))
    elif isinstance(source, (str, os.PathLike)):
        raw, default_name = _read_yaml(os.fspath(source))
        raw.setdefault("name", default_name)
    else:
        raise ConfigError(f"a config is a preset name, a YAML path, a mapping or a Config, not {type(source).__name__}")
    if isinstance(overrides, Mapping):
        for key, value in overrides.items():
            set_value(raw, key, copy.deepcopy(value))
    elif isinstance(overrides, str):  # one `key=value`, not its characters
        apply_override(raw, overrides)
    else:
        for assignment in overrides or ():
            if not isinstance(assignment, str):
                raise ConfigError(f"override {assignment!r}: expected a `key.path=value` string")
            apply_override(raw, assignment)
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_error(e)) from None


def _sections_in(annotation) -> list[type[BaseModel]]:
    """Section classes inside an annotation such as `PromptConfig | None` or `list[str | LossMix]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _sections_in(arg)]


def describe(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every field, recursively: the config reference.

    A section that may be empty (`sampling.prompts`) lists its keys as `sampling.prompts.KEY`; a
    list whose entries may be mappings (`train.losses`) as `train.losses[].KEY`, one of a tagged list's
    kinds as `reward.terms[type=length].KEY`.
    """
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            rows.extend(describe(field.annotation, key + "."))
            continue
        if field.is_required():
            default = "(required)"
        else:
            default = field.get_default(call_default_factory=True)
            default = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()
        rows.append((key, default, field.description or ""))
        entry = "[]." if typing.get_origin(field.annotation) is list else "."
        for section in _sections_in(field.annotation):
            kind = section.model_fields.get("type")  # one kind of a tagged list (reward.terms): named by its tag
            tag = typing.get_args(kind.annotation)[0] if kind is not None and typing.get_args(kind.annotation) else None
            rows.extend(describe(section, key + (f"[type={tag}]." if tag else entry)))
    return rows
