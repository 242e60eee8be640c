"""Model cards: a `README.md` in every trained model's directory, written by the report stage.

A model directory copied elsewhere then explains itself: what it was trained from and against,
with which loss, beta, pair rule, recipe and number of pairs, and how it scored in this run's
evaluation (mean and std across runs), with the lines that load it. The YAML header follows the
Hugging Face hub's model-card metadata (`library_name`, `base_model`, `tags`).
"""

from __future__ import annotations

import json
import math

from prefalign.pipeline.items import IterativeRound, RlooModel
from prefalign.pipeline.store import read_json

# The evaluation metrics a card shows: (results column, label).
CARD_METRICS = (
    ("reward_mean", "mean reward"),
    ("positive_rate", "positive rate"),
    ("diversity", "diversity (nats)"),
    ("distinct_2", "distinct-2"),
    ("kl_seq", "KL to the original (nats per text)"),
    ("broken_share", "share of texts with undecodable bytes (U+FFFD)"),
)


def _mean_sd(row, column: str) -> str:
    mean, sd = row.get(column), row.get(f"{column}_sd")
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    return f"{mean:.3f}" + (f" ± {sd:.3f}" if sd is not None and not math.isnan(sd) else "")


def model_card(model, row: dict, cfg) -> str:
    """The README.md of a trained model (`row`: its summary row of the report: run means and `_sd`s)."""
    info = read_json(model.path / "train.json") or {}
    settings = info.get("settings", {})
    precision = "bf16 autocast" if settings.get("bf16") else "TF32" if settings.get("tf32") else "fp32"
    if isinstance(model, RlooModel):
        method = f"online RL with TRL's RLOOTrainer, KL coefficient {model.kl_coef:g}, {model.steps} steps"
        data, tags = "its own samples, scored by the reward classifier during training", ["rloo"]
    else:
        rule = ", ".join(f"{k} {v}" for k, v in model.pairs.rule.items())
        method = f"TRL DPOTrainer, loss `{model.loss_label}`, beta {model.beta:g}, recipe `{model.recipe}`"
        if isinstance(model, IterativeRound):
            method += f", round {model.round} of the on-policy chain {model.chain}"
        data = (
            f"{info.get('pairs', '?')} chosen/rejected pairs by the `{model.pairs.strategy}` rule"
            + (f" ({rule})" if rule else "")
            + f", from {model.pairs.samples.count} scored samples"
        )
        tags = ["dpo", model.loss_label]
    # A policy with code of its own (policy.trust_remote_code) saves that code beside its weights.
    own_code = ", trust_remote_code=True" if cfg.policy.trust_remote_code else ""
    start = getattr(model, "start", None)
    base = cfg.policy.model if start is None or start.name == "original" else f"{start.name} (this run's models/)"
    lines = [
        "---",
        "library_name: transformers",
        f"base_model: {json.dumps(cfg.policy.model)}",
        "tags: [" + ", ".join(["prefalign", "preference-alignment", *tags]) + "]",
        "---",
        "",
        f"# {model.name}",
        "",
        "A causal language model aligned by prefalign to the preferences of the classifier "
        f"`{cfg.reward.model}` (reward: its "
        + ("single logit" if cfg.reward.single_logit else f"`{cfg.reward.positive_label}` logit")
        + ").",
        "",
        "## Training",
        "",
        f"- trained from: `{base}`; reference: `{cfg.policy.model}`",
        f"- method: {method}",
        f"- data: {data}",
        f"- settings: {precision}, seed {settings.get('seed', '?')}, {info.get('train_seconds', '?')} s of training"
        + (f", LoRA {info['lora']}" if info.get("lora") else ""),
        f"- processes: {info.get('world_size', 1)}" + (f" ({info['parallel']})" if info.get("parallel") else ""),
        "",
        "## Evaluation",
        "",
        f"{int(row.get('runs', 0))} runs of {cfg.evaluate.samples} samples each, mean ± std across runs "
        "(the same evaluation seeds for every model of the run):",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {label} | {_mean_sd(row, column)} |" for column, label in CARD_METRICS if column in row],
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'model = AutoModelForCausalLM.from_pretrained("path/to/this/directory"{own_code})',
        f'tokenizer = AutoTokenizer.from_pretrained("path/to/this/directory"{own_code})',
        "```",
        "",
    ]
    return "\n".join(lines)
