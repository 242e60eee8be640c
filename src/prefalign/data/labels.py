"""Label values and column names shared by every corpus source: one vocabulary, so "pos",
"Positive", True and 1 all mean positive, and texts cleaned the same way whatever their source."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from prefalign.errors import CorpusError

POSITIVE_VALUES = {"1", "pos", "positive", "fresh", "true"}
NEGATIVE_VALUES = {"0", "neg", "negative", "rotten", "false"}
# -1 is what Hugging Face's imdb uses for its `unsupervised` split.
UNLABELLED_VALUES = {"", "-1", "unsup", "unlabelled", "unlabeled", "none", "nan"}

# Column pairs tried, in order, when the default `text`/`label` names are absent.
COLUMN_PAIRS = (("text", "label"), ("review", "sentiment"), ("sentence", "label"), ("text", "category"))


def is_missing(value) -> bool:
    # None, NaN, and pandas' NA (nullable dtypes), without importing pandas here.
    return value is None or (isinstance(value, float) and math.isnan(value)) or type(value).__name__ == "NAType"


def label_key(value) -> str:
    """A canonical string for a label value: bools and integral floats (pandas' NaN-able ints) as ints."""
    if is_missing(value):
        return ""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip().lower()


def label_mapper(positive, where: str):
    """Return value -> 1/0/-1. With `positive` given, its values are 1 and every other labelled value 0."""
    if positive is not None:
        single = isinstance(positive, (str, int, bool)) or not isinstance(positive, Iterable)
        values = [positive] if single else positive
        wanted = {label_key(v) for v in values}

        def custom(value) -> int:
            key = label_key(value)
            return -1 if key in UNLABELLED_VALUES and key not in wanted else int(key in wanted)

        return custom

    def builtin(value) -> int:
        key = label_key(value)
        if key in POSITIVE_VALUES:
            return 1
        if key in NEGATIVE_VALUES:
            return 0
        if key in UNLABELLED_VALUES:
            return -1
        raise CorpusError(
            f"{where}: unknown label value {value!r}; expected one of 1/0, true/false, pos/neg, positive/negative, "
            "fresh/rotten (any case), or empty/-1/unsup for unlabelled. Say which value is positive with "
            "`prefalign build-demo --positive VALUE`"
        )

    return builtin


_BR = re.compile(r"(\s*<br\s*/?>\s*)+", re.IGNORECASE)  # a run of line breaks becomes one space


def clean_text(text) -> str:
    if is_missing(text):
        return ""
    return _BR.sub(" ", str(text)).strip()


def finish(rows: Iterable[tuple[object, object]], mapper) -> tuple[list[str], list[int]]:
    """Clean texts, map labels, drop empty texts (nothing to learn from them)."""
    texts, labels = [], []
    for text, label in rows:
        text = clean_text(text)
        if text:
            texts.append(text)
            labels.append(mapper(label))
    return texts, labels


def pick_columns(columns: list[str], text_column: str, label_column: str | None, where: str) -> tuple[str, str | None]:
    if label_column is None:  # texts only
        if text_column in columns:
            return text_column, None
        fallbacks = [t for t, _ in COLUMN_PAIRS[1:] if t in columns] if text_column == "text" else []
        if fallbacks:
            return fallbacks[0], None
        raise CorpusError(
            f"{where}: no text column {text_column!r}; its columns are {columns}. Name the text column "
            "in `sampling.prompts.text_column`"
        )
    if text_column in columns and label_column in columns:
        return text_column, label_column
    if (text_column, label_column) == COLUMN_PAIRS[0]:
        for pair in COLUMN_PAIRS[1:]:
            if pair[0] in columns and pair[1] in columns:
                return pair
    missing = [c for c in (text_column, label_column) if c not in columns]
    tried = (
        ""
        if (text_column, label_column) != COLUMN_PAIRS[0]
        else (" (also tried " + ", ".join(f"{t}/{lab}" for t, lab in COLUMN_PAIRS[1:]) + ")")
    )
    raise CorpusError(
        f"{where}: no column {' or '.join(map(repr, missing))}{tried}; its columns are {columns}. "
        "Name them with `prefalign build-demo --text-column C --label-column C`"
    )
