"""Checks of the TRL trainer settings a config names, before anything runs: loss names, and
mappings of `DPOConfig` / `RLOOConfig` fields (their names and type annotations) with prefalign's
own switches (recipes.OWN_SETTINGS). config.py's validators call these."""

from __future__ import annotations

import dataclasses
import difflib
import enum
import typing
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from prefalign.config.recipes import OWN_CHOICES, OWN_SETTINGS
from prefalign.config.words import shown, type_words
from prefalign.training.trackers import TRACKER_FIELDS

# Every loss TRL 1.16's DPOTrainer implements (branches of `DPOTrainer._compute_loss`).
TRL_LOSSES = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
)


# What the papers call a loss -> its name here (TRL names DPO's loss after its sigmoid).
LOSS_NAMES_IN_PAPERS = {"dpo": "sigmoid", "slic-hf": "slic", "slic_hf": "slic"}

# Bounds of common numeric fields that the config classes leave to the trainer, where a wrong value
# failed mid-run with a traceback (a DataLoader's batch_size=0, a ZeroDivisionError, torch's
# "Invalid learning rate"); one place for their check and their message.
FIELD_BOUNDS = {
    "per_device_train_batch_size": (lambda x: x >= 1, ">= 1"),
    "per_device_eval_batch_size": (lambda x: x >= 1, ">= 1"),
    "gradient_accumulation_steps": (lambda x: x >= 1, ">= 1"),
    "num_train_epochs": (lambda x: x > 0, "> 0"),
    "learning_rate": (lambda x: x >= 0, ">= 0"),
    "weight_decay": (lambda x: x >= 0, ">= 0"),
    "max_grad_norm": (lambda x: x >= 0, ">= 0 (0: no clipping)"),
    "max_steps": (lambda x: x == -1 or x > 0, "> 0, or -1 (then num_train_epochs decides)"),
    "warmup_steps": (lambda x: x >= 0, ">= 0"),
    "logging_steps": (lambda x: x > 0, "> 0"),
    "max_length": (lambda x: x >= 2, ">= 2 tokens"),
    "num_generations": (lambda x: x >= 2, ">= 2 (RLOO's baseline needs two completions per prompt)"),
}
# Trainer fields prefalign cannot honour, with the values it can, and what to do instead.
NO_EVAL_SET = "training has no evaluation set (the evaluate stage measures every model)"
UNSUPPORTED_FIELDS = {
    "torch_compile": (
        (False,),
        "prefalign compiles the training step itself: set `compile_step` (fused, graphs, auto)",
    ),
    "push_to_hub": (
        (False,),
        "models are saved in the run directory; upload one with `hf upload REPO RUN_DIR/models/MODEL`",
    ),
    "eval_strategy": (("no",), NO_EVAL_SET),
    "do_eval": ((False,), NO_EVAL_SET),
    "load_best_model_at_end": ((False,), NO_EVAL_SET),
}


class WrittenAsInt(float):
    """A float field's value written as an integer (`logging_steps: 5`, `num_train_epochs: 1`): a float
    to TRL and in every key (json writes it as 5.0, as before), the integer in the resolved config
    (config.yaml, report.html, `prefalign config`) and in messages."""

    def __repr__(self) -> str:
        return str(int(self))

    __str__ = __repr__


yaml.SafeDumper.add_representer(WrittenAsInt, lambda dumper, value: dumper.represent_int(int(value)))


def check_loss(entry):
    """A `train.losses` entry: a TRL loss name or `slic` (a mix is checked by LossMix)."""
    if isinstance(entry, str) and entry not in TRL_LOSSES + ("slic",):
        hint = (
            [LOSS_NAMES_IN_PAPERS[entry.lower()]]
            if entry.lower() in LOSS_NAMES_IN_PAPERS
            else difflib.get_close_matches(entry, TRL_LOSSES + ("slic",), n=1)
        )
        raise ValueError(
            f"unknown loss {entry!r}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + f"; TRL 1.16 supports {', '.join(TRL_LOSSES)}, plus `slic`"
        )
    return entry


def dpo_fields(v: dict[str, Any], owner: str) -> dict[str, Any]:
    """`train.dpo` / `iterative.dpo`: DPOConfig fields or prefalign's own switches (recipes.OWN_SETTINGS)."""
    from trl import DPOConfig

    # beta / loss_type / output_dir are set per model by prefalign; YAML changing them would desync the grid.
    return trainer_fields(v, DPOConfig, {"beta", "loss_type", "output_dir"}, owner, OWN_SETTINGS)


def trainer_fields(
    v: dict[str, Any], config_cls, owned: set[str], owner: str, own: dict | None = None
) -> dict[str, Any]:
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
        if value is False and key in names and "no" in _enum_choices(hints[key]):
            value = "no"  # YAML reads an unquoted `no` as false: `eval_strategy: no` means the choice "no"
        if key in UNSUPPORTED_FIELDS and value not in UNSUPPORTED_FIELDS[key][0]:
            raise ValueError(f"`{key}: {value}` is not supported: {UNSUPPORTED_FIELDS[key][1]}")
        if key not in names:
            hint = difflib.get_close_matches(key, names | set(own), n=1)
            raise ValueError(
                f"`{key}` is not a {config_cls.__name__} field" + (f" (did you mean `{hint[0]}`?)" if hint else "")
            )
        try:
            adapter = TypeAdapter(hints[key])
        except Exception:  # an annotation pydantic cannot express: leave it to the config class
            checked[key] = value
            continue
        try:
            checked[key] = adapter.validate_python(value)
        except ValidationError:
            raise ValueError(f"`{key}`: {shown(value)} is not {type_words(hints[key])}") from None
        if type(checked[key]) is float and isinstance(value, int) and not isinstance(value, bool):
            checked[key] = WrittenAsInt(checked[key])
        bound = FIELD_BOUNDS.get(key)
        if bound and isinstance(checked[key], (int, float)) and not bound[0](checked[key]):  # None: the default
            raise ValueError(f"`{key}` must be {bound[1]}, not {value!r}")
        choices = _enum_choices(hints[key])
        if choices and isinstance(checked[key], str) and checked[key] not in choices:
            hint = difflib.get_close_matches(checked[key], choices, n=1)
            raise ValueError(
                f"`{key}`: {value!r} is not one of {', '.join(choices)}"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
            )
    return checked


def _enum_choices(annotation) -> list[str]:
    """The values of an Enum in a field's annotation (`SchedulerType | str`: the names transformers
    accepts, checked only when the trainer is built), else []."""
    kinds = [
        a for a in (typing.get_args(annotation) or (annotation,)) if isinstance(a, type) and issubclass(a, enum.Enum)
    ]
    return [str(member.value) for kind in kinds for member in kind]
