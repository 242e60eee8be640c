import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from prefalign.stages.train_rloo import OWNED, RLOO_DEFAULTS, ClassifierReward, rloo_settings, train_rloo
from prefalign.training.job import RlooJob

TEXTS = ["A wonderful, moving film.", "Dull and far too long.", "ok", "The plot falls apart in the second half, sadly."]
CPU = torch.device("cpu")


def _classifier(ctok, id2label):
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(0)
    cfg = DistilBertConfig(
        vocab_size=len(ctok),
        dim=32,
        n_layers=1,
        n_heads=2,
        hidden_dim=64,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    return DistilBertForSequenceClassification(cfg).eval()


@pytest.mark.parametrize("id2label, column", [({0: "POSITIVE", 1: "NEGATIVE"}, 0), ({0: "NEGATIVE", 1: "POSITIVE"}, 1)])
def test_reward_is_the_logit_of_the_class_named_positive(tiny_classifier, id2label, column):
    _, ctok = tiny_classifier
    clf = _classifier(ctok, id2label)
    reward = ClassifierReward(clf, ctok, "POSITIVE")
    assert reward.__name__ == "classifier"
    got = reward(prompts=["<|endoftext|>"] * len(TEXTS), completions=TEXTS, completion_ids=None, trainer_state=None)
    assert isinstance(got, list) and all(isinstance(x, float) for x in got)
    with torch.inference_mode():
        logits = clf(**ctok(TEXTS, padding=True, return_tensors="pt")).logits
    assert torch.allclose(torch.tensor(got), logits[:, column], atol=1e-5)
    assert not torch.allclose(torch.tensor(got), logits[:, 1 - column], atol=1e-3)


@pytest.mark.parametrize("name", OWNED)
def test_overriding_an_owned_field_is_refused(tiny_classifier, tmp_path, name):
    clf, ctok = tiny_classifier
    with pytest.raises(ValueError, match=name):
        train_rloo(RlooJob("unused", tmp_path / "m", kl_coef=0.1, steps=1, overrides={name: 1}), clf, ctok)
    with pytest.raises(ValueError, match="not_a_field"):
        rloo_settings(RlooJob("unused", tmp_path / "m", kl_coef=0.1, steps=1, overrides={"not_a_field": 1}), "x")
    assert not (tmp_path / "m").exists()


def test_settings_follow_sampling_then_overrides(tmp_path):
    from trl import RLOOConfig

    sampling = SimpleNamespace(max_length=40, top_k=20, top_p=0.9, temperature=0.7)
    job = RlooJob("unused", tmp_path / "m", kl_coef=0.2, steps=7, overrides={"top_k": 5}, seed=3, sampling=sampling)
    settings = rloo_settings(job, str(tmp_path))
    args = RLOOConfig(**settings)
    assert (args.max_completion_length, args.top_k, args.top_p, args.temperature) == (39, 5, 0.9, 0.7)
    assert (args.beta, args.max_steps, args.seed, args.learning_rate) == (0.2, 7, 3, RLOO_DEFAULTS["learning_rate"])
    assert args.use_cpu and not args.bf16 and not args.gradient_checkpointing and args.save_strategy == "no"
    assert args.generation_batch_size % args.num_generations == 0 and settings["report_to"] == "none"


def test_rloo_changes_the_weights_and_saves_safetensors(tiny_dir, tiny_classifier, tmp_path):
    clf, ctok = tiny_classifier
    out, lines = tmp_path / "model", []
    overrides = dict(learning_rate=1e-3, logging_steps=1, per_device_train_batch_size=8, max_completion_length=16)
    job = RlooJob(str(tiny_dir / "policy"), out, kl_coef=0.05, steps=3, overrides=overrides, device=CPU, key="k")
    info = train_rloo(job, clf, ctok, log=lines.append)
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    saved = json.loads((out / "train.json").read_text())
    assert (saved["key"], saved["method"], saved["kl_coef"], saved["steps"]) == ("k", "rloo", 0.05, 3)
    assert saved["settings"]["beta"] == 0.05
    assert saved["settings"]["num_generations"] == RLOO_DEFAULTS["num_generations"]
    rewards = [h["rewards/classifier/mean"] for h in info["log_history"] if "rewards/classifier/mean" in h]
    assert len(rewards) == 3 and saved["final_reward"] == pytest.approx(rewards[-1])
    assert any("kl" in h for h in info["log_history"])
    assert sum("step " in line and "reward" in line for line in lines) == 3
    before = load_file(tiny_dir / "policy" / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    assert not list(tmp_path.glob(".*tmp*"))
    card = (out / "README.md").read_text()  # the card, written with the weights
    assert "online RL with TRL's RLOOTrainer, KL coefficient 0.05, 3 steps" in card and "tags: [prefalign" in card
