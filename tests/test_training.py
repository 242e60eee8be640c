import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from prefalign.training import RECIPES, bos_prompt, train_one


def test_prompt_is_the_bos_token_for_gpt2_style_tokenizers(tiny_policy):
    _, tok = tiny_policy
    assert bos_prompt(tok) == "<|endoftext|>"


def test_seed_recipe_is_the_originals():
    r = RECIPES["seed"]
    assert (r["optim"], r["learning_rate"], r["warmup_steps"], r["num_train_epochs"]) == ("rmsprop", 5e-3, 50, 3)
    assert (r["per_device_train_batch_size"], r["max_length"], r["bf16"]) == (8, 256, False)


@pytest.mark.parametrize("loss", ["sigmoid", "hinge", "ipo"])
def test_training_changes_the_weights_and_saves_safetensors(tiny_dir, tmp_path, loss):
    pairs = pd.DataFrame({
        "prompt": "<|endoftext|>",
        "chosen": ["The film was superb and I loved it."] * 16,
        "rejected": ["The film was awful."] * 16,
    })  # fmt: skip
    pairs.to_parquet(tmp_path / "pairs.parquet")
    out = tmp_path / "model"
    info = train_one(str(tiny_dir / "policy"), None, tmp_path / "pairs.parquet", out, "default", loss, 0.1,
                     {"learning_rate": 1e-2, "logging_steps": 1}, torch.device("cpu"), 0, key="k", log=lambda m: None)  # fmt: skip
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    saved = json.loads((out / "train.json").read_text())
    assert saved["key"] == "k" and saved["loss"] == loss and saved["settings"]["loss_type"] == [loss]
    assert any("loss" in h for h in info["log_history"])
    before = load_file(tiny_dir / "policy" / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert not list(tmp_path.glob(".*tmp*"))
