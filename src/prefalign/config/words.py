"""Types said in words, for the message about a value of the wrong type: `'fast' is not a number`,
never `'fast' is not a valid <class 'float'>`."""

from __future__ import annotations

import enum
import types
import typing

from pydantic import BaseModel

# pydantic's error types that say a value has the wrong type, and the type in words.
ERROR_WORDS = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "text",
    "list_type": "a list",
    "tuple_type": "a list",
    "set_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping (a section of keys)",
    "model_attributes_type": "a mapping (a section of keys)",
}
EMPTY = "empty (null)"


def _word(annotation) -> str | None:
    """One member of a type in words, or None for one said by another member (an Enum beside `str`)."""
    origin = typing.get_origin(annotation)
    if annotation is type(None):
        return EMPTY
    if origin is typing.Literal:
        return " or ".join(str(v).lower() if isinstance(v, bool) else repr(v) for v in typing.get_args(annotation))
    if origin in (list, tuple, set, frozenset) or annotation in (list, tuple, set, frozenset):
        return "a list"
    if origin is dict or annotation is dict:
        return "a mapping"
    simple = {bool: "true or false", int: "an integer", float: "a number", str: "text"}
    if annotation in simple:
        return simple[annotation]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(str(m.value) for m in annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "a mapping (a section of keys)"
    return getattr(annotation, "__name__", str(annotation))


def joined(words: list[str]) -> str:
    """`a`, `a or b`, `a, b, or c` (a comma before the last `or` where a word holds one itself)."""
    words = list(dict.fromkeys(words))
    if EMPTY in words:  # empty last: "an integer or empty (null)"
        words = [w for w in words if w != EMPTY] + [EMPTY]
    if len(words) <= 1:
        return "".join(words)
    last = ", or " if len(words) > 2 or any(" or " in w for w in words) else " or "
    return ", ".join(words[:-1]) + last + words[-1]


def type_words(annotation) -> str:
    """What a field of type `annotation` takes, in words: `a number`, `true or false, or empty (null)`."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    members = typing.get_args(annotation) if union else (annotation,)
    enums = [m for m in members if isinstance(m, type) and issubclass(m, enum.Enum)]
    if enums and str in members:  # `SchedulerType | str`: the choices are checked by name later
        members = tuple(m for m in members if m not in enums)
    return joined([w for w in map(_word, members) if w])


def shown(value) -> str:
    """A value as a message quotes it, cut short when long."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
