"""Hub datasets as corpora (data/hub.py), offline: their labels are `ClassLabel` ids with names.

Every real sentiment dataset on the hub (imdb, glue/sst2, rotten_tomatoes) stores its label as a
`ClassLabel` int; imdb's `unsupervised` split and sst2's `test` split hold -1 (no label). Here a
`DatasetDict` with such features is saved to disk and served by a stand-in for
`datasets.load_dataset`, so the real hub path runs from the id to the mapped labels.
"""

from __future__ import annotations

import datasets
import pytest

from prefalign.data import hub
from prefalign.data.corpus import CorpusError, load_labelled_texts, load_texts

POS, NEG = ["A warm, funny and wise film.", "The cast is superb."], ["Dull from start to finish.", "A tedious mess."]


def imdb_like() -> datasets.DatasetDict:
    """imdb's layout: `text`/`label`, ClassLabel(neg, pos), an `unsupervised` split labelled -1."""
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    return datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"text": [POS[0], NEG[0], POS[1], NEG[1]], "label": [1, 0, 1, 0]}, features=features
            ),
            "test": datasets.Dataset.from_dict({"text": [NEG[1], POS[1]], "label": [0, 1]}, features=features),
            "unsupervised": datasets.Dataset.from_dict(
                {"text": ["Saw it on a Tuesday.", "Popcorn."], "label": [-1, -1]}, features=features
            ),
        }
    )


def sst2_like() -> datasets.DatasetDict:
    """glue/sst2's layout: `sentence`/`label`/`idx`, ClassLabel(negative, positive), a `test` split labelled -1."""
    features = datasets.Features(
        {
            "sentence": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["negative", "positive"]),
            "idx": datasets.Value("int32"),
        }
    )
    return datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"sentence": [NEG[0], POS[0], NEG[1], POS[1]], "label": [0, 1, 0, 1], "idx": [0, 1, 2, 3]},
                features=features,
            ),
            "test": datasets.Dataset.from_dict(
                {"sentence": [POS[0], NEG[0]], "label": [-1, -1], "idx": [0, 1]}, features=features
            ),
        }
    )


@pytest.fixture
def hub_datasets(tmp_path, monkeypatch):
    """{name: DatasetDict saved to disk}; `datasets.load_dataset(name, subset, split=...)` serves them
    (the split asked for, as the hub would) and records its calls."""
    saved, calls = {}, []

    def serve(name: str, dataset: datasets.DatasetDict) -> None:
        path = tmp_path / name.replace("/", "__")
        dataset.save_to_disk(str(path))
        saved[name] = path

    def load_dataset(name, subset=None, split=None):
        calls.append((name, subset, split))
        if name not in saved:
            raise FileNotFoundError(f"Dataset '{name}' doesn't exist on the Hub")
        return datasets.load_from_disk(str(saved[name]))[split]

    monkeypatch.setattr(hub, "offline_requested", lambda: False)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return serve, calls


def test_an_imdb_like_dataset_maps_neg_and_pos_class_ids_to_0_and_1(hub_datasets):
    serve, calls = hub_datasets
    serve("stanfordnlp/imdb", imdb_like())
    assert load_labelled_texts("stanfordnlp/imdb") == ([POS[0], NEG[0], POS[1], NEG[1]], [1, 0, 1, 0])
    assert load_labelled_texts("stanfordnlp/imdb", split="test") == ([NEG[1], POS[1]], [0, 1])
    assert calls == [("stanfordnlp/imdb", None, "train"), ("stanfordnlp/imdb", None, "test")]


def test_a_split_labelled_minus_one_is_unlabelled_text(hub_datasets):
    """imdb's `unsupervised` split (ClassLabel value -1) gives texts for the LM, none for the classifier."""
    serve, _ = hub_datasets
    serve("stanfordnlp/imdb", imdb_like())
    assert load_labelled_texts("stanfordnlp/imdb", split="unsupervised") == (
        ["Saw it on a Tuesday.", "Popcorn."],
        [-1, -1],
    )


def test_an_sst2_like_subset_maps_negative_and_positive_names_and_its_test_split_is_unlabelled(hub_datasets):
    serve, calls = hub_datasets
    serve("nyu-mll/glue", sst2_like())
    assert load_labelled_texts("nyu-mll/glue", subset="sst2") == ([NEG[0], POS[0], NEG[1], POS[1]], [0, 1, 0, 1])
    assert load_labelled_texts("nyu-mll/glue", subset="sst2", split="test") == ([POS[0], NEG[0]], [-1, -1])
    assert calls == [("nyu-mll/glue", "sst2", "train"), ("nyu-mll/glue", "sst2", "test")]


def test_class_ids_are_read_by_their_names_not_their_order(hub_datasets):
    """A dataset whose class 0 is `positive`: id 0 must become label 1, not 0."""
    serve, _ = hub_datasets
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["positive", "negative"])}
    )
    serve(
        "someone/reversed",
        datasets.DatasetDict(
            {"train": datasets.Dataset.from_dict({"text": [POS[0], NEG[0]], "label": [0, 1]}, features=features)}
        ),
    )
    assert load_labelled_texts("someone/reversed") == ([POS[0], NEG[0]], [1, 0])


def test_a_class_name_chosen_as_positive_makes_every_other_class_negative(hub_datasets):
    """`build-demo --positive NAME` on a dataset whose class names are not a sentiment vocabulary."""
    serve, _ = hub_datasets
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["sad", "joy", "anger"])}
    )
    serve(
        "someone/emotions",
        datasets.DatasetDict(
            {
                "train": datasets.Dataset.from_dict(
                    {"text": ["a", "b", "c", "d"], "label": [0, 1, 2, 1]}, features=features
                )
            }
        ),
    )
    assert load_labelled_texts("someone/emotions", positive="joy") == (["a", "b", "c", "d"], [0, 1, 0, 1])
    with pytest.raises(CorpusError, match=r"unknown label value 'sad'.*--positive"):
        load_labelled_texts("someone/emotions")  # without it, a name outside the vocabulary is an error


def test_prompts_from_a_hub_dataset_read_its_text_column_alone(hub_datasets):
    serve, _ = hub_datasets
    serve("nyu-mll/glue", sst2_like())
    assert load_texts("nyu-mll/glue", subset="sst2", split="test") == [POS[0], NEG[0]]


def test_a_class_id_chosen_as_positive_means_that_class(hub_datasets):
    """`--positive 1` (the id, as it would be for a file of int labels) picks class 1 by its name."""
    serve, _ = hub_datasets
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["sad", "joy", "anger"])}
    )
    rows = {"text": ["a", "b", "c", "d"], "label": [0, 1, 2, 1]}
    serve("someone/moods", datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows, features=features)}))
    for positive in (1, "1", [1], "joy"):
        assert load_labelled_texts("someone/moods", positive=positive) == (["a", "b", "c", "d"], [0, 1, 0, 1])
