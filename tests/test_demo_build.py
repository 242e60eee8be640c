"""prefalign.models.builtin on a corpus file: what a build writes, that it is cached, and the demo spec."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
import torch

from prefalign.models import builtin as B
from prefalign.models.specs import SPECS

pytestmark = pytest.mark.slow  # builds (trains) models

# Small enough for seconds on 2 cores: a 320-token vocabulary (the byte alphabet is 256 + 6 specials).
SMALL = dict(
    vocab_size=320,
    lm_layers=1,
    lm_dim=32,
    lm_heads=2,
    lm_epochs=1,
    lm_positions=80,
    clf_layers=1,
    clf_dim=32,
    clf_heads=2,
    clf_epochs=1,
    max_text_tokens=48,
    held_out=40,
)


@pytest.fixture(scope="module")
def corpus_csv(tmp_path_factory):
    """240 labelled snippets (string labels in `review`/`sentiment` columns) plus 20 unlabelled ones."""
    texts, labels = B.synthetic_corpus(n=400, seed=3)
    rows = [(t, "positive") for t, y in zip(texts, labels) if y == 1][:180]
    rows += [(t, "negative") for t, y in zip(texts, labels) if y == 0][:60]
    rows += [(t, "") for t in texts[-20:]]
    path = tmp_path_factory.mktemp("corpus") / "snippets.csv"
    pd.DataFrame(rows, columns=["review", "sentiment"]).to_csv(path, index=False)
    return str(path)


def spec_for(corpus: str, **over) -> B.BuildSpec:
    return B.BuildSpec(name="filetest", corpus=corpus, **{**SMALL, **over})


@pytest.fixture(scope="module")
def built(corpus_csv, tmp_path_factory):
    """One build shared by the tests below: (spec, cache root, model directory)."""
    spec, root = spec_for(corpus_csv), tmp_path_factory.mktemp("cache")
    return spec, root, B.build(spec, root=root, log=lambda m: None)


def held_out_accuracy(spec: B.BuildSpec, out) -> tuple[float, int]:
    """(accuracy, texts) of the saved classifier on the labelled texts the build held out: builtin.build's
    split, the corpus shuffled under the spec's seed and its first `held_out` texts."""
    import random

    import numpy as np

    from prefalign.engine.scoring import score_texts
    from prefalign.models.loading import load_classifier

    texts, labels = B.load_corpus(spec)
    order = list(range(len(texts)))
    random.Random(spec.seed).shuffle(order)
    held = [i for i in order[: spec.held_out] if labels[i] >= 0]
    clf, tok = load_classifier(str(out / "reward"), None, torch.device("cpu"))
    predicted = score_texts([texts[i] for i in held], clf, tok, positive_index=1)["is_positive"]
    return float(np.mean(predicted == np.array([labels[i] == 1 for i in held]))), len(held)


def test_build_writes_models_and_info(built, corpus_csv):
    from transformers import AutoConfig

    spec, root, out = built
    assert out == root / "models" / spec.key()
    for part in ("policy", "reward"):
        assert (out / part / "config.json").is_file() and (out / part / "model.safetensors").is_file()
        assert (out / part / "tokenizer.json").is_file()
    info = json.loads((out / "info.json").read_text())
    assert info["spec"]["corpus"] == corpus_csv
    assert info["corpus"] == {"texts": 260, "labelled": 240}
    assert info["policy"]["held_out_texts"] == 40
    assert 1.0 < info["policy"]["perplexity"] < 320  # better than uniform over the vocabulary
    # The accuracy is the saved classifier's on the labelled held-out texts (the unlabelled ones left out).
    accuracy, held_out = held_out_accuracy(spec, out)
    assert info["reward_model"]["held_out_texts"] == held_out < 40
    assert info["reward_model"]["accuracy"] == pytest.approx(accuracy, abs=1 / held_out)
    reward = AutoConfig.from_pretrained(out / "reward")
    assert {int(k): v for k, v in reward.id2label.items()} == {0: "NEGATIVE", 1: "POSITIVE"}
    assert reward.model_type == "distilbert" and AutoConfig.from_pretrained(out / "policy").model_type == "gpt2"
    assert not list(out.parent.glob(".*tmp-*"))  # the temporary build directory was renamed away


def test_second_build_is_cached_and_other_spec_is_not(built, monkeypatch):
    spec, root, first = built
    stamp = (first / "info.json").stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("a cached build must not train again")

    monkeypatch.setattr(B, "train_policy", no_training)
    monkeypatch.setattr(B, "train_classifier", no_training)
    assert B.build(spec, root=root, log=lambda m: None) == first
    assert (first / "info.json").stat().st_mtime_ns == stamp

    other = dataclasses.replace(spec, seed=1)
    assert other.key() != spec.key()
    with pytest.raises(AssertionError, match="must not train again"):
        B.build(other, root=root, log=lambda m: None)  # a different spec is a different build
    assert not (root / "models" / other.key()).exists()


def test_policy_and_classifier_run_on_the_built_models(built):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    out = built[2]
    ptok = AutoTokenizer.from_pretrained(out / "policy")
    policy = AutoModelForCausalLM.from_pretrained(out / "policy").eval()
    assert ptok.bos_token == ptok.eos_token == B.BOS
    bos = torch.tensor([[ptok.bos_token_id]])
    ids = policy.generate(
        bos, attention_mask=torch.ones_like(bos), do_sample=False, max_length=20, pad_token_id=ptok.eos_token_id
    )
    assert ids.shape[1] > 1
    ctok = AutoTokenizer.from_pretrained(out / "reward")
    clf = AutoModelForSequenceClassification.from_pretrained(out / "reward").eval()
    enc = ctok(["The film was great.", "The plot was dull."], padding=True, return_tensors="pt")
    assert enc["input_ids"][0, 0].item() == ctok.cls_token_id
    with torch.no_grad():
        assert clf(**enc).logits.shape == (2, 2)


def test_demo_spec():
    spec = SPECS["demo"]
    assert spec.name == "demo" and spec.corpus == "rotten_tomatoes"
    # TRL appends EOS to 63 sampled tokens after the BOS prompt: 65 positions at least.
    assert spec.lm_positions > 65
    assert spec.key() != SPECS["tiny"].key() and spec.key().startswith("demo-")
    assert spec.held_out >= 1000  # accuracy and perplexity are measured on enough texts to compare specs


def test_build_demo_cli_takes_another_corpus(corpus_csv, tmp_path, monkeypatch, capsys):
    from prefalign.cli import main

    monkeypatch.setenv("PREFALIGN_CACHE", str(tmp_path))
    assert main(["build-demo", "tiny", "--corpus", corpus_csv]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    info = json.loads((tmp_path / "models" / out.rsplit("/", 1)[-1] / "info.json").read_text())
    assert info["spec"]["corpus"] == corpus_csv and info["corpus"]["labelled"] == 240


def test_a_killed_builds_leftovers_are_removed(corpus_csv, tmp_path):
    spec = spec_for(corpus_csv, seed=7)
    stale = tmp_path / "models" / f".{spec.key()}.tmp-999999999"  # no such process
    (stale / "policy").mkdir(parents=True)
    target = B.build(spec, root=tmp_path, log=lambda m: None)
    assert (target / "info.json").exists() and not stale.exists()


def test_a_classifier_fine_tuned_from_a_pretrained_encoder(corpus_csv, tmp_path):
    """BuildSpec.clf_base: the classifier starts from an encoder's weights and keeps its tokenizer
    (here a tiny BERT saved locally, standing in for all-MiniLM-L6-v2); policy=False builds it alone."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        BertConfig,
        BertModel,
        BertTokenizerFast,
    )

    from prefalign.models.loading import ModelLoadError, resolve

    base = tmp_path / "encoder"
    base.mkdir()
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(B.synthetic_corpus(n=200)[0], vocab_size=200)
    wordpiece.save_model(str(base))
    BertTokenizerFast(vocab_file=str(base / "vocab.txt")).save_pretrained(base)
    torch.manual_seed(0)
    encoder = BertModel(
        BertConfig(
            vocab_size=wordpiece.get_vocab_size(),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    )
    encoder.save_pretrained(base)

    spec = spec_for(corpus_csv, clf_base=str(base), policy=False, clf_lr=1e-3)
    out = B.build(spec, root=tmp_path / "cache", log=lambda m: None)
    assert not (out / "policy").exists() and (out / "reward" / "model.safetensors").is_file()
    info = json.loads((out / "info.json").read_text())
    assert "policy" not in info
    accuracy, held_out = held_out_accuracy(spec, out)
    assert info["reward_model"]["held_out_texts"] == held_out
    assert info["reward_model"]["accuracy"] == pytest.approx(accuracy, abs=1 / held_out)
    assert AutoConfig.from_pretrained(out / "reward").model_type == "bert"
    assert AutoTokenizer.from_pretrained(out / "reward").get_vocab() == AutoTokenizer.from_pretrained(base).get_vocab()
    tuned = AutoModelForSequenceClassification.from_pretrained(out / "reward").bert.embeddings.word_embeddings.weight
    start = encoder.embeddings.word_embeddings.weight
    assert not torch.equal(tuned, start) and torch.allclose(tuned, start, atol=0.2)  # fine-tuned, not trained anew
    # the defaults leave every existing build's cache key as it was
    assert SPECS["demo"].key() == "demo-27b89c6c0171" and SPECS["tiny"].key() == "tiny-a181fa402724"
    with pytest.raises(ModelLoadError, match="classifier only"):
        resolve("prefalign:demo-minilm", "policy")
