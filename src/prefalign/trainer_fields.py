"""Checks of the TRL trainer settings a config names, before anything runs: loss names, and
mappings of `DPOConfig` / `RLOOConfig` fields (their names and type annotations) with prefalign's
own switches (recipes.OWN_SETTINGS). config.py's validators call these."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any

from pydantic import TypeAdapter, ValidationError

from prefalign.recipes import OWN_CHOICES, OWN_SETTINGS
from prefalign.trackers import TRACKER_FIELDS

# Every loss TRL 1.16's DPOTrainer implements (branches of `DPOTrainer._compute_loss`).
TRL_LOSSES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
    "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)  # fmt: skip


def check_loss(entry):
    """A `train.losses` entry: a TRL loss name or `slic` (a mix is checked by LossMix)."""
    if isinstance(entry, str) and entry not in TRL_LOSSES + ("slic",):
        hint = difflib.get_close_matches(entry, TRL_LOSSES + ("slic",), n=1)
        raise ValueError(f"unknown loss {entry!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                         + f"; TRL 1.16 supports {', '.join(TRL_LOSSES)}, plus `slic`")  # fmt: skip
    return entry


def dpo_fields(v: dict[str, Any], owner: str) -> dict[str, Any]:
    """`train.dpo` / `iterative.dpo`: DPOConfig fields or prefalign's own switches (recipes.OWN_SETTINGS)."""
    from trl import DPOConfig

    # beta / loss_type / output_dir are set per model by prefalign; YAML changing them would desync the grid.
    return trainer_fields(v, DPOConfig, {"beta", "loss_type", "output_dir"}, owner, OWN_SETTINGS)


def trainer_fields(v: dict[str, Any], config_cls, owned: set[str], owner: str, own: dict | None = None) -> dict[str, Any]:
    """Check a mapping of TRL config fields against `config_cls`'s names and type annotations, now
    rather than after sampling has run for an hour. `own`: prefalign's own switches, also allowed
    (booleans, or one of recipes.OWN_CHOICES)."""
    if not v:
        return v
    own = own or {}
    names = {f.name for f in dataclasses.fields(config_cls)}
    hints = typing.get_type_hints(config_cls)
    checked = {}
    for key, value in v.items():
        if key in own:
            choices = OWN_CHOICES.get(key, (True, False))
            if value not in choices or isinstance(value, bool) != isinstance(choices[0], bool):
                raise ValueError(f"`{key}` must be one of {', '.join(str(c).lower() for c in choices)}, not {value!r}")
            checked[key] = value
            continue
        if key in TRACKER_FIELDS:
            raise ValueError(f"`{key}` is set by prefalign (use train.report_to)")
        if key in owned:
            raise ValueError(f"`{key}` is set by prefalign (use {owner})")
        if key not in names:
            hint = difflib.get_close_matches(key, names | set(own), n=1)
            raise ValueError(f"`{key}` is not a {config_cls.__name__} field" + (f" (did you mean `{hint[0]}`?)" if hint else ""))
        try:
            adapter = TypeAdapter(hints[key])
        except Exception:  # an annotation pydantic cannot express: leave it to the config class
            checked[key] = value
            continue
        try:
            checked[key] = adapter.validate_python(value)
        except ValidationError as e:
            raise ValueError(f"`{key}`: {value!r} is not a valid {hints[key]} ({e.errors()[0]['msg']})") from None
    return checked
