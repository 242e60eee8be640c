"""The whole pipeline on policies and classifiers that are not GPT-2 / DistilBERT: a Llama-style
policy (rotary positions, grouped-query attention), an OPT policy (positions from the attention
mask) with the compiled training and decode steps, a BERT classifier whose labels are `neg` / `pos`
and a three-class RoBERTa one. Random weights, the tiny preset's tokenizers."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch


def _build(kind: str, tiny_dir, root):
    """A tiny random-weight model of `kind`, saved with the tiny models' tokenizer; returns its directory."""
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForSequenceClassification,
        LlamaConfig,
        LlamaForCausalLM,
        OPTConfig,
        OPTForCausalLM,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    torch.manual_seed(0)
    policy_tok, reward_tok = (AutoTokenizer.from_pretrained(tiny_dir / d) for d in ("policy", "reward"))
    ids = dict(vocab_size=len(policy_tok), bos_token_id=policy_tok.bos_token_id, eos_token_id=policy_tok.eos_token_id)
    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=128)
    labels = {"bert": ["neg", "pos"], "roberta": ["negative", "neutral", "positive"]}.get(kind, [])
    classes = dict(
        id2label=dict(enumerate(labels)),
        label2id={v: i for i, v in enumerate(labels)},
        vocab_size=len(reward_tok),
        pad_token_id=reward_tok.pad_token_id,
        intermediate_size=64,
    )
    model, tokenizer = {
        "llama": lambda: (
            LlamaForCausalLM(LlamaConfig(intermediate_size=64, num_key_value_heads=1, **small, **ids)),
            policy_tok,
        ),
        "opt": lambda: (
            OPTForCausalLM(
                OPTConfig(ffn_dim=64, word_embed_proj_dim=32, pad_token_id=ids["eos_token_id"], **small, **ids)
            ),
            policy_tok,
        ),
        "bert": lambda: (
            BertForSequenceClassification(BertConfig(**{**small, "max_position_embeddings": 256}, **classes)),
            reward_tok,
        ),
        "roberta": lambda: (
            RobertaForSequenceClassification(RobertaConfig(**{**small, "max_position_embeddings": 258}, **classes)),
            reward_tok,
        ),
    }[kind]()
    model.save_pretrained(root / kind)
    tokenizer.save_pretrained(root / kind)
    return root / kind


@pytest.mark.parametrize(
    "policy,classifier,positive,compiled", [("llama", "bert", "pos", False), ("opt", "roberta", "positive", True)]
)
def test_other_architectures_run_every_stage(tiny_dir, tmp_path, cli, policy, classifier, positive, compiled):
    policy_dir, classifier_dir = _build(policy, tiny_dir, tmp_path), _build(classifier, tiny_dir, tmp_path)
    run_dir = tmp_path / "run"
    compile_settings = (
        ["--set", "train.dpo.compile_step=fused", "--set", "sampling.compile_step=fused"] if compiled else []
    )
    cli(
        "run",
        "tiny",
        "--set",
        f"run_dir={run_dir}",
        "--set",
        f"policy.model={policy_dir}",
        "--set",
        f"reward.model={classifier_dir}",
        "--set",
        f"reward.positive_label={positive}",
        "--set",
        "pairs.strategies=[random]",
        "--set",
        "train.losses=[sigmoid]",
        "--set",
        "evaluate.runs=1",
        "--set",
        "evaluate.samples=64",
        *compile_settings,
    )
    results = pd.read_csv(run_dir / "results.csv")
    assert set(results[results.method != "best_of_n"].model) == {"original", "random-sigmoid-beta0.1-default"}
    trained = results[results.model != "original"].iloc[0]
    assert trained.kl_seq > 0 and trained.diversity > 0
    texts = pd.read_parquet(run_dir / "eval" / "random-sigmoid-beta0.1-default" / "run-00.parquet")
    assert len(texts) == 64 and trained.positive_rate == pytest.approx(
        texts.is_positive.mean()
    )  # the classifier's verdicts
    model_dir = run_dir / "models" / "random-sigmoid-beta0.1-default"
    assert (model_dir / "model.safetensors").exists()
    assert json.loads((model_dir / "train.json").read_text())["step_compiled_as"] == ("fused" if compiled else "eager")
    # Training's own config settings (cache off, TRL's pad id; Llama has none) are not saved with the model.
    original, saved = (json.loads((d / "config.json").read_text()) for d in (policy_dir, model_dir))
    assert {k: saved.get(k) for k in ("use_cache", "pad_token_id")} == {
        k: original.get(k) for k in ("use_cache", "pad_token_id")
    }
    assert (run_dir / "report.md").exists()


CUSTOM_CODE = {
    "policy": ("GPT2Config", "GPT2LMHeadModel", "AutoModelForCausalLM"),
    "reward": ("DistilBertConfig", "DistilBertForSequenceClassification", "AutoModelForSequenceClassification"),
}


def _with_own_code(source, root, role: str):
    """A copy of the tiny `role` model whose classes are code shipped in its directory (config.json's
    auto_map), as a hub checkpoint that needs `trust_remote_code`: subclasses of the built-in ones."""
    import shutil

    config_class, model_class, auto_class = CUSTOM_CODE[role]
    target = root / f"own-code-{role}"
    shutil.copytree(source, target)
    model_type = f"prefalign_test_{role}"
    (target / "configuration_own.py").write_text(
        f"from transformers import {config_class}\n\n\nclass OwnConfig({config_class}):\n"
        f"    model_type = {model_type!r}\n"
    )
    (target / "modeling_own.py").write_text(
        f"from transformers import {model_class}\n\nfrom .configuration_own import OwnConfig\n\n\n"
        f"class OwnModel({model_class}):\n    config_class = OwnConfig\n"
    )
    config = json.loads((target / "config.json").read_text())
    config.update(
        model_type=model_type,
        architectures=["OwnModel"],
        auto_map={"AutoConfig": "configuration_own.OwnConfig", auto_class: "modeling_own.OwnModel"},
    )
    (target / "config.json").write_text(json.dumps(config))
    return target


def test_checkpoints_with_their_own_code_run_only_when_trusted(tiny_dir, tmp_path, cli):
    policy_dir, classifier_dir = (_with_own_code(tiny_dir / role, tmp_path, role) for role in ("policy", "reward"))
    run_dir = tmp_path / "run"
    settings = [
        "--set",
        f"run_dir={run_dir}",
        "--set",
        f"policy.model={policy_dir}",
        "--set",
        f"reward.model={classifier_dir}",
        "--set",
        "pairs.strategies=[random]",
        "--set",
        "train.losses=[sigmoid]",
        "--set",
        "evaluate.runs=1",
        "--set",
        "evaluate.samples=64",
    ]
    refused = cli("run", "tiny", *settings, check=False)
    assert refused.returncode == 2 and "policy.trust_remote_code: true" in refused.stderr and not run_dir.exists()
    refused = cli("run", "tiny", *settings, "--set", "policy.trust_remote_code=true", check=False)
    assert refused.returncode == 2 and "reward.trust_remote_code: true" in refused.stderr and not run_dir.exists()

    cli("run", "tiny", *settings, "--set", "policy.trust_remote_code=true", "--set", "reward.trust_remote_code=true")
    results = pd.read_csv(run_dir / "results.csv")
    assert set(results[results.method != "best_of_n"].model) == {"original", "random-sigmoid-beta0.1-default"}
    assert results.kl_seq.iloc[-1] > 0 and results.diversity.gt(0).all()
    model_dir = run_dir / "models" / "random-sigmoid-beta0.1-default"
    # The trained model carries the code it needs (its model card, written by training, says how to load it).
    assert (model_dir / "modeling_own.py").exists()
    assert "auto_map" in json.loads((model_dir / "config.json").read_text())
