"""Labelled corpora from the Hugging Face hub (`datasets.load_dataset`), offline from the local
`datasets` cache; `ClassLabel` ids are read by their names, so label order never matters."""

from __future__ import annotations

import contextlib

from prefalign.data.labels import finish, label_mapper, pick_columns
from prefalign.errors import CorpusError
from prefalign.models.hub import hub_reachable, offline_requested


def load_hub_corpus(
    name: str, split: str | None, text_column: str, label_column: str, positive, subset: str | None = None
) -> tuple[list[str], list[int]]:
    """A hub dataset as corpus.load_labelled_texts returns it; offline (asked for, or the hub
    unreachable) only from the local `datasets` cache, failing at once with a CorpusError."""
    offline = offline_requested() or not hub_reachable()
    reason = "HF_HUB_OFFLINE is set" if offline_requested() else "the Hugging Face hub is unreachable"
    try:
        import datasets
    except ImportError:
        raise CorpusError(
            f"corpus {name!r} looks like a hub dataset id, but the `datasets` package is not installed"
        ) from None
    try:
        with _offline_if(offline):
            ds = datasets.load_dataset(name, subset or None, split=split or "train")
    except Exception as e:
        cause = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if offline:
            msg = (
                f"corpus {name!r} is not a local file or folder, so it was read as a Hugging Face hub dataset id, "
                f"but {reason} and the dataset is not in the local datasets cache. Use a local file instead "
                "(.csv/.jsonl/.parquet with text and label columns, or an aclImdb folder) or the offline "
                "'rotten_tomatoes' corpus"
            )
        else:
            msg = f"corpus {name!r}: could not load hub dataset (split {split or 'train'!r}" + (
                f", subset {subset!r})" if subset else ")"
            )
            if not subset and "config" in str(e).lower():  # datasets: "Config name is missing ..."
                msg += "; a dataset with several subsets needs one named: `sampling.prompts.subset` or `--subset`"
        raise CorpusError(f"{msg}.\n  Cause: {cause}") from None
    if not isinstance(ds, datasets.Dataset):
        raise CorpusError(
            f"corpus {name!r}: split {split!r} did not give one dataset ({type(ds).__name__}); name one split"
        )
    text_column, label_column = pick_columns(list(ds.column_names), text_column, label_column, f"corpus {name!r}")
    if label_column is None:
        return finish(((text, None) for text in ds[text_column]), lambda value: -1)
    labels = ds[label_column]
    feature = ds.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        # Class ids -> names, so label order never matters ("neg"/"pos" or "positive"/"negative").
        labels = [feature.int2str(v) if v is not None and v >= 0 else -1 for v in labels]
        positive = class_names(positive, feature.names)
    return finish(zip(ds[text_column], labels), label_mapper(positive, f"corpus {name!r} column {label_column!r}"))


@contextlib.contextmanager
def _offline_if(offline: bool):
    """Offline mode while `offline`: a dataset can still come from the local `datasets` cache, and a miss
    fails at once instead of retrying the network for ~25 s."""
    import datasets
    import huggingface_hub.constants as hub_constants

    saved = hub_constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    if offline:
        hub_constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved


def hub_columns(name: str, subset: str | None = None) -> list[str] | None:
    """A hub dataset's columns as its local `datasets` cache describes them, or None when it is not there
    (or `datasets` is not installed): planning never asks the hub, the sample stage loads the dataset."""
    try:
        import datasets

        with _offline_if(True):
            features = datasets.load_dataset_builder(name, subset or None).info.features
    except Exception:  # not in the cache, or any other reason: the sample stage says it
        return None
    return list(features) if features else None


def class_names(positive, names: list[str]):
    """`positive` (a value or values) with every class id (an int, or digits that are no class's
    name) turned into that class's name: labels are compared as names once ids are read."""
    if positive is None:
        return None
    values = [positive] if isinstance(positive, (str, int)) else list(positive)

    def named(value):
        is_id = (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, str) and value.strip().isdigit() and value not in names
        )
        return names[int(value)] if is_id and 0 <= int(value) < len(names) else value

    return [named(v) for v in values]
