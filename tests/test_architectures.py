"""The whole pipeline on policies and classifiers that are not GPT-2 / DistilBERT: a Llama-style
policy (rotary positions, grouped-query attention), an OPT policy (positions from the attention
mask) with the compiled training and decode steps, a BERT classifier whose labels are `neg` / `pos`
and a three-class RoBERTa one. Random weights, the tiny preset's tokenizers."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

pytestmark = pytest.mark.slow


def _build(kind: str, tiny_dir, root):
    """A tiny random-weight model of `kind`, saved with the tiny models' tokenizer; returns its directory."""
    from transformers import (AutoTokenizer, BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM,
                              OPTConfig, OPTForCausalLM, RobertaConfig, RobertaForSequenceClassification)  # fmt: skip

    torch.manual_seed(0)
    policy_tok, reward_tok = (AutoTokenizer.from_pretrained(tiny_dir / d) for d in ("policy", "reward"))
    ids = dict(vocab_size=len(policy_tok), bos_token_id=policy_tok.bos_token_id, eos_token_id=policy_tok.eos_token_id)
    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=128)
    labels = {"bert": ["neg", "pos"], "roberta": ["negative", "neutral", "positive"]}.get(kind, [])
    classes = dict(id2label=dict(enumerate(labels)), label2id={v: i for i, v in enumerate(labels)},
                   vocab_size=len(reward_tok), pad_token_id=reward_tok.pad_token_id, intermediate_size=64)  # fmt: skip
    model, tokenizer = {
        "llama": lambda: (LlamaForCausalLM(LlamaConfig(intermediate_size=64, num_key_value_heads=1, **small, **ids)), policy_tok),
        "opt": lambda: (OPTForCausalLM(OPTConfig(ffn_dim=64, word_embed_proj_dim=32, pad_token_id=ids["eos_token_id"],
                                                 **small, **ids)), policy_tok),  # fmt: skip
        "bert": lambda: (BertForSequenceClassification(BertConfig(**{**small, "max_position_embeddings": 256}, **classes)), reward_tok),
        "roberta": lambda: (RobertaForSequenceClassification(RobertaConfig(**{**small, "max_position_embeddings": 258},
                                                                           **classes)), reward_tok),  # fmt: skip
    }[kind]()
    model.save_pretrained(root / kind)
    tokenizer.save_pretrained(root / kind)
    return root / kind


@pytest.mark.parametrize("policy,classifier,positive,compiled", [("llama", "bert", "pos", False),
                                                                  ("opt", "roberta", "positive", True)])  # fmt: skip
def test_other_architectures_run_every_stage(tiny_dir, tmp_path, cli, policy, classifier, positive, compiled):
    policy_dir, classifier_dir = _build(policy, tiny_dir, tmp_path), _build(classifier, tiny_dir, tmp_path)
    run_dir = tmp_path / "run"
    compile_settings = ["--set", "train.dpo.compile_step=fused", "--set", "sampling.compile_step=fused"] if compiled else []
    cli("run", "tiny", "--set", f"run_dir={run_dir}", "--set", f"policy.model={policy_dir}",
                 "--set", f"reward.model={classifier_dir}", "--set", f"reward.positive_label={positive}",
                 "--set", "pairs.strategies=[random]", "--set", "train.losses=[sigmoid]", "--set", "evaluate.runs=1",
                 "--set", "evaluate.samples=64", *compile_settings)  # fmt: skip
    results = pd.read_csv(run_dir / "results.csv")
    assert set(results.model) == {"original", "random-sigmoid-beta0.1-default"}
    trained = results[results.model != "original"].iloc[0]
    assert trained.kl_seq > 0 and 0 <= trained.positive_rate <= 1 and trained.diversity > 0
    model_dir = run_dir / "models" / "random-sigmoid-beta0.1-default"
    assert (model_dir / "model.safetensors").exists()
    assert json.loads((model_dir / "train.json").read_text())["step_compiled_as"] == ("fused" if compiled else "eager")
    # Training's own config settings (cache off, TRL's pad id; Llama has none) are not saved with the model.
    original, saved = (json.loads((d / "config.json").read_text()) for d in (policy_dir, model_dir))
    assert {k: saved.get(k) for k in ("use_cache", "pad_token_id")} == {k: original.get(k) for k in ("use_cache", "pad_token_id")}
    assert (run_dir / "report.md").exists()
