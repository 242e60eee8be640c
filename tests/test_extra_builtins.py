"""The built-ins beside the policy/classifier pairs: the judges (`prefalign:tiny-judge`, `prefalign:demo-judge`),
second classifiers of the same task."""

from __future__ import annotations

import json

import pytest
import torch

from prefalign.config.loader import ConfigError, load_config
from prefalign.models.builtin import build, split
from prefalign.models.specs import SPECS, builtin_checked


def test_existing_builds_keep_their_cache_directories():
    assert SPECS["tiny"].key() == "tiny-a181fa402724" and SPECS["demo"].key() == "demo-27b89c6c0171"
    assert SPECS["demo-minilm"].key() == "demo-minilm-924ca776499a"


@pytest.mark.parametrize("name", ["tiny-judge", "demo-judge"])
def test_a_judge_holds_out_its_references_texts_and_trains_on_other_data(name):
    judge = SPECS[name]
    reference = SPECS[judge.compare_with]
    assert judge.split() == reference.split() and judge.seed != reference.seed and not judge.policy
    labels = [0, 1] * (3 * reference.held_out)
    held, kept, trained_on = split(judge, labels)
    assert (held, kept) == split(reference, labels)[:2]
    assert len(trained_on) == len(kept) // 2 and set(trained_on) <= set(kept)


def test_tiny_judge_builds_offline_into_a_classifier_with_its_agreement_recorded(tiny_dir, cache_root):
    from prefalign.models.loading import load_classifier

    out = build(SPECS["tiny-judge"], cache_root, log=lambda msg: None)
    assert not (out / "policy").exists()
    info = json.loads((out / "info.json").read_text())
    agreement = info["agreement"]
    assert agreement["reference"] == "tiny" and agreement["held_out_texts"] == info["reward_model"]["held_out_texts"]
    assert agreement["judge_accuracy"] == pytest.approx(info["reward_model"]["accuracy"])
    assert 0.0 <= agreement["same_label_share"] <= 1.0 and -1.0 <= agreement["positive_logit_pearson"] <= 1.0
    model, tokenizer = load_classifier("prefalign:tiny-judge", None, torch.device("cpu"))
    assert {int(k): v for k, v in model.config.id2label.items()} == {0: "NEGATIVE", 1: "POSITIVE"}
    assert model.training is False and tokenizer.pad_token is not None


def test_a_judge_is_a_classifier_only():
    assert builtin_checked("prefalign:demo-judge", "reward") == "prefalign:demo-judge"
    with pytest.raises(ConfigError, match=r"prefalign:tiny-judge' is a classifier only"):
        load_config("tiny", ["policy.model=prefalign:tiny-judge"])
    cfg = load_config("tiny", ["evaluate.judges=[{name: judge, model: prefalign:tiny-judge}]"])
    assert cfg.evaluate.judges[0].model == "prefalign:tiny-judge"
