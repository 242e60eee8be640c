"""The Hugging Face hub: whether it can be reached (checked before a download would retry for
~25 s), and labelled corpora loaded from it (corpus.load_labelled_texts for a hub dataset id).
"""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse

from prefalign.models.corpus import CorpusError, _finish, _label_mapper, _pick_columns


def _offline_requested() -> bool:
    # Read at call time: huggingface_hub reads these once at import, so a later setting would be missed.
    flags = (os.environ.get(v, "") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(f.strip().upper() in ("1", "ON", "YES", "TRUE") for f in flags)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Can a TCP connection to the hub endpoint (`HF_ENDPOINT`) open within `timeout` seconds?

    Run in a thread because name resolution has no timeout of its own. Behind a proxy the direct
    connection says nothing, so the answer is then "yes" and the hub client decides.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def load_hub_corpus(name: str, split: str | None, text_column: str, label_column: str, positive,
                    subset: str | None = None) -> tuple[list[str], list[int]]:  # fmt: skip
    """A hub dataset as corpus.load_labelled_texts returns it; offline (asked for, or the hub
    unreachable) only from the local `datasets` cache, failing at once with a CorpusError."""
    offline = _offline_requested() or not hub_reachable()
    reason = "HF_HUB_OFFLINE is set" if _offline_requested() else "the Hugging Face hub is unreachable"
    try:
        import datasets
        import huggingface_hub.constants as hub_constants
    except ImportError:
        raise CorpusError(
            f"corpus {name!r} looks like a hub dataset id, but the `datasets` package is not installed"
        ) from None

    saved = hub_constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    if offline:
        # Offline mode: the dataset can still come from the local `datasets` cache, and a miss fails
        # at once instead of retrying the network for ~25 s.
        hub_constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        ds = datasets.load_dataset(name, subset or None, split=split or "train")
    except Exception as e:
        cause = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if offline:
            msg = (f"corpus {name!r} is not a local file or folder, so it was read as a Hugging Face hub dataset id, "
                   f"but {reason} and the dataset is not in the local datasets cache. Use a local file instead "
                   "(.csv/.jsonl/.parquet with text and label columns, or an aclImdb folder) or the offline "
                   "'rotten_tomatoes' corpus")  # fmt: skip
        else:
            msg = f"corpus {name!r}: could not load hub dataset (split {split or 'train'!r}" + (
                f", subset {subset!r})" if subset else ")")
            if not subset and "config" in str(e).lower():  # datasets: "Config name is missing ..."
                msg += "; a dataset with several subsets needs one named: `sampling.prompts.subset` or `--subset`"
        raise CorpusError(f"{msg}.\n  Cause: {cause}") from None
    finally:
        hub_constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved
    if not isinstance(ds, datasets.Dataset):
        raise CorpusError(
            f"corpus {name!r}: split {split!r} did not give one dataset ({type(ds).__name__}); name one split"
        )
    text_column, label_column = _pick_columns(list(ds.column_names), text_column, label_column, f"corpus {name!r}")
    if label_column is None:
        return _finish(((text, None) for text in ds[text_column]), lambda value: -1)
    labels = ds[label_column]
    feature = ds.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        # Class ids -> names, so label order never matters ("neg"/"pos" or "positive"/"negative").
        labels = [feature.int2str(v) if v is not None and v >= 0 else -1 for v in labels]
    return _finish(zip(ds[text_column], labels), _label_mapper(positive, f"corpus {name!r} column {label_column!r}"))
