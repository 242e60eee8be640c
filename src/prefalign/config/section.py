"""The base of every config section: unknown keys are errors, and one value where a list is
expected is a list of one (`--set train.betas=0.1` is `[0.1]`)."""

import types
import typing

from pydantic import BaseModel, ConfigDict, model_validator


def _is_list(annotation) -> bool:
    """Whether a field's type is a list, or a list or None (not a union that also takes a single value)."""
    if typing.get_origin(annotation) is list:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        return len(members) == 1 and typing.get_origin(members[0]) is list
    return False


class Section(BaseModel):
    # Unknown keys are errors, not silently ignored: a misspelled `betas` must not run the defaults.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _one_value_as_a_list(cls, data):
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                value = data.get(name)
                if value is not None and not isinstance(value, (list, tuple)) and _is_list(field.annotation):
                    data = {**data, name: [value]}
        return data


def label_name(v):
    """A class label as written in a config: a label named `5` (star ratings) reads as an int from
    YAML; the name is its text."""
    return str(v) if isinstance(v, int) and not isinstance(v, bool) else v
