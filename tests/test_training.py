import contextlib
import json
import math

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from prefalign.config.recipes import RECIPES
from prefalign.models.loading import bos_prompt
from prefalign.stages.train_dpo import train_one
from prefalign.training.job import DpoJob


def test_prompt_is_the_bos_token_for_gpt2_style_tokenizers(tiny_policy):
    _, tok = tiny_policy
    assert bos_prompt(tok) == "<|endoftext|>"


def test_seed_recipe_is_the_originals():
    r = RECIPES["seed"]
    assert (r["optim"], r["learning_rate"], r["warmup_steps"], r["num_train_epochs"]) == ("rmsprop", 5e-3, 50, 3)
    assert (r["per_device_train_batch_size"], r["max_length"]) == (8, 256)


def test_precision_is_fp32_on_cpu_and_bf16_autocast_on_a_bf16_gpu():
    from prefalign.config.recipes import precision_settings

    assert precision_settings("auto", "cpu", False, False) == {"bf16": False, "fp16": False}
    assert precision_settings("auto", "cuda", True, True) == {"bf16": True, "fp16": False, "tf32": False}
    assert precision_settings("auto", "cuda", False, True) == {"bf16": False, "fp16": False, "tf32": False}
    assert precision_settings("fp32", "cuda", True, True) == {"bf16": False, "fp16": False, "tf32": False}
    assert precision_settings("tf32", "cuda", True, True) == {"bf16": False, "fp16": False, "tf32": True}
    assert precision_settings("tf32", "cpu", False, False) == {"bf16": False, "fp16": False}
    assert precision_settings("tf32", "cuda", False, False) == {"bf16": False, "fp16": False, "tf32": False}


@pytest.mark.parametrize("loss", ["sigmoid", "hinge", "ipo"])
def test_training_changes_the_weights_and_saves_safetensors(tiny_dir, tmp_path, loss):
    pairs = pd.DataFrame(
        {
            "prompt": "<|endoftext|>",
            "chosen": ["The film was superb and I loved it."] * 16,
            "rejected": ["The film was awful."] * 16,
        }
    )
    pairs.to_parquet(tmp_path / "pairs.parquet")
    out = tmp_path / "model"
    info = train_one(
        DpoJob(
            tmp_path / "pairs.parquet",
            str(tiny_dir / "policy"),
            out,
            recipe="default",
            loss=loss,
            beta=0.1,
            overrides={"learning_rate": 1e-2, "logging_steps": 1},
            key="k",
        ),
        log=lambda m: None,
    )
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    saved = json.loads((out / "train.json").read_text())
    assert saved["key"] == "k" and saved["loss"] == loss and saved["settings"]["loss_type"] == [loss]
    assert any("loss" in h for h in info["log_history"])
    before = load_file(tiny_dir / "policy" / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert not list(tmp_path.glob(".*tmp*"))


def test_a_trained_model_directory_holds_its_card_written_with_the_weights(tiny_dir, tmp_path):
    """README.md is saved with the model: what trained it (base model, loss, beta, recipe, pairs,
    precision, seed), where its evaluation lives, and how to load it."""
    pairs = pd.DataFrame(
        {"prompt": "<|endoftext|>", "chosen": ["Superb, I loved it."] * 8, "rejected": ["Awful and dull."] * 8}
    )
    pairs.to_parquet(tmp_path / "pairs.parquet")
    out = tmp_path / "my-model"
    job = DpoJob(
        tmp_path / "pairs.parquet",
        str(tiny_dir / "policy"),
        out,
        loss="hinge",
        beta=0.5,
        seed=3,
        overrides={"max_steps": 1},
    )
    info = train_one(job, log=lambda m: None)
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\nbase_model: " + json.dumps(str(tiny_dir / "policy")))
    assert "# my-model" in card and "tags: [prefalign, preference-alignment, dpo, hinge]" in card
    assert (
        "TRL DPOTrainer, loss `hinge`, beta 0.5, recipe `default`" in card and "- data: 8 chosen/rejected pairs" in card
    )
    assert f"- settings: fp32, seed 3, {info['train_seconds']} s of training" in card
    assert "`report.md` and `results.csv`" in card and "| mean reward |" not in card
    assert 'AutoModelForCausalLM.from_pretrained("path/to/this/directory")' in card


def test_length_grouped_order_is_a_permutation_of_sorted_megabatches():
    import numpy as np

    from prefalign.training.dpo_data import length_grouped_order

    lengths = np.random.default_rng(1).integers(1, 64, size=203)
    order = length_grouped_order(lengths, batch_size=4, seed=3, megabatch=5)
    assert sorted(order.tolist()) == list(range(203))
    for start in range(0, 203, 20):  # each megabatch of 5 x 4 is sorted longest first
        chunk = lengths[order[start : start + 20]]
        assert (np.diff(chunk) <= 0).all()
    assert (order == length_grouped_order(lengths, 4, 3, 5)).all()
    assert not (order == length_grouped_order(lengths, 4, 4, 5)).all()
    # the point of it: batches pad far less than in a random order
    pad = lambda o: sum(lengths[o[i : i + 4]].max() * 4 - lengths[o[i : i + 4]].sum() for i in range(0, 200, 4))  # noqa: E731
    assert pad(order) < 0.3 * pad(np.random.default_rng(0).permutation(203))


def test_completion_only_head_gives_the_same_log_probs_and_gradients(tiny_dir):
    """The patched TRL head (completion positions only) must match stock TRL's every-position path on CPU."""
    import copy

    import trl.trainer.utils as trl_utils
    from transformers import AutoModelForCausalLM

    from prefalign.engine.trl_compat import completion_tokens_only

    base = AutoModelForCausalLM.from_pretrained(tiny_dir / "policy", dtype=torch.float32)
    trl_utils.add_fused_lm_head(base, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    ids = torch.randint(5, base.config.vocab_size, (3, 12), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :2] = -100  # prompt
    labels[0, 9:] = -100  # padding of a shorter row
    results = []
    for patched in (True, False):
        model = copy.deepcopy(base)
        with completion_tokens_only() if patched else contextlib.nullcontext():
            out = model(input_ids=ids, labels=labels, fused_lm_head=True)
            out.log_probs.sum().backward()
        results.append((out.log_probs.detach(), out.entropy.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (lp1, ent1, g1), (lp2, ent2, g2) = results
    assert (lp1[0, 8:] == 0).all() and lp1.abs().sum() > 0  # masked positions are zero, the rest scored
    torch.testing.assert_close(lp1, lp2)
    torch.testing.assert_close(ent1, ent2)
    for n in g1:
        torch.testing.assert_close(g1[n], g2[n], rtol=1e-4, atol=1e-6)
    assert trl_utils._use_triton(torch.device("cpu")) is False  # the patch is undone on exit


def test_default_recipe_records_its_own_switches(tiny_dir, tmp_path):
    texts = [
        "The film was superb and I loved it.",
        "Awful.",
        "A long, slow and very dull story about nothing.",
        "Fine.",
    ]
    pairs = pd.DataFrame(
        {
            "prompt": "<|endoftext|>",
            "chosen": [texts[i % 4] for i in range(16)],
            "rejected": [texts[(i + 1) % 4] + " no" for i in range(16)],
        }
    )
    pairs.to_parquet(tmp_path / "pairs.parquet")
    info = train_one(
        DpoJob(
            tmp_path / "pairs.parquet",
            str(tiny_dir / "policy"),
            tmp_path / "m",
            recipe="default",
            loss="sigmoid",
            beta=0.1,
            overrides={"group_by_length": False},
        ),
        log=lambda m: None,
    )
    assert info["settings"]["group_by_length"] is False and info["settings"]["completion_only_head"] is True
    assert "train_sampling_strategy" not in info["settings"]  # TRL's random sampler
    info = train_one(
        DpoJob(
            tmp_path / "pairs.parquet",
            str(tiny_dir / "policy"),
            tmp_path / "m",
            recipe="default",
            loss="sigmoid",
            beta=0.1,
            overrides={},
        ),
        log=lambda m: None,
    )
    # the pairs arrive in length-grouped random order, which the trainer must then keep
    assert info["settings"]["train_sampling_strategy"] == "sequential"


def _every_loss():
    from prefalign.config.trainer_fields import TRL_LOSSES

    return list(TRL_LOSSES) + ["slic"]


@pytest.mark.parametrize("loss", _every_loss())
def test_every_trl_loss_type_trains_one_step(tiny_dir, tmp_path, loss):
    """Each loss the config accepts runs through TRL 1.16's DPOTrainer and moves the weights."""
    from prefalign.config.loader import load_config

    extra = {"label_smoothing": 1e-3} if loss == "exo_pair" else {}
    load_config("tiny", [f"train.losses=[{loss}]"] + [f"train.dpo.{k}={v}" for k, v in extra.items()])  # accepted
    pairs = pd.DataFrame(
        {
            "prompt": "<|endoftext|>",
            "chosen": ["The film was superb and I loved it."] * 8,
            "rejected": ["The film was awful and dull."] * 8,
        }
    )
    pairs.to_parquet(tmp_path / "pairs.parquet")
    out = tmp_path / "model"
    info = train_one(
        DpoJob(
            tmp_path / "pairs.parquet",
            str(tiny_dir / "policy"),
            out,
            recipe="default",
            loss=loss,
            beta=0.1,
            overrides={"learning_rate": 1e-2, "max_steps": 1, "logging_steps": 1, **extra},
        ),
        log=lambda m: None,
    )
    losses = [h["loss"] for h in info["log_history"] if "loss" in h]
    assert losses and all(math.isfinite(x) for x in losses), info["log_history"]
    before = load_file(tiny_dir / "policy" / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_exo_pair_without_label_smoothing_is_a_config_error():
    from prefalign.config.loader import ConfigError, load_config

    with pytest.raises(ConfigError, match="label_smoothing"):
        load_config("tiny", ["train.losses=[exo_pair]"])


def test_only_complete_checkpoints_are_resumed_from(tmp_path):
    from prefalign.training.trained_model import last_complete_checkpoint

    assert last_complete_checkpoint(tmp_path) is None
    for step, complete in ((5, True), (10, True), (15, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    assert not (tmp_path / "checkpoint-15").exists()  # a save cut short is removed


def test_pairs_longer_than_the_policy_positions_are_truncated(tiny_dir, tmp_path):
    """A collapsed policy's texts of broken byte tokens re-encode to more tokens than were sampled:
    training truncates them at the policy's positions instead of indexing past its position table."""
    from transformers import AutoConfig

    positions = AutoConfig.from_pretrained(tiny_dir / "policy").n_positions
    long_text = "superb \ufffd\ufffd film " * positions  # several tokens per word: far past the positions
    pairs = pd.DataFrame(
        {"prompt": "<|endoftext|>", "chosen": [long_text, "Superb."] * 8, "rejected": ["Awful.", long_text] * 8}
    )
    pairs.to_parquet(tmp_path / "pairs.parquet")
    for recipe in ("default", "seed"):
        info = train_one(
            DpoJob(
                tmp_path / "pairs.parquet",
                str(tiny_dir / "policy"),
                tmp_path / recipe,
                recipe=recipe,
                loss="sigmoid",
                beta=0.1,
                overrides={"num_train_epochs": 1},
            ),
            log=lambda m: None,
        )
        assert info["settings"]["max_length"] == positions
        assert (tmp_path / recipe / "model.safetensors").exists()


def test_a_saved_model_keeps_its_config_as_loaded_not_the_trainers_settings():
    from types import SimpleNamespace

    from transformers import GPT2Config, PretrainedConfig

    from prefalign.training.trained_model import config_as_loaded, restore_config

    # A GPT-2 config has both settings; a bare one (a custom model's) has neither, and must not gain them.
    for config, expected in ((GPT2Config(), {"use_cache": True, "pad_token_id": None}), (PretrainedConfig(), {})):
        model = SimpleNamespace(config=config)
        loaded = config_as_loaded(model)
        config.use_cache, config.pad_token_id = False, 0  # what the Trainer and TRL set for training
        restore_config(model, loaded)
        assert {k: v for k, v in config.to_dict().items() if k in ("use_cache", "pad_token_id")} == expected
