"""Model cards: the `README.md` a training writes into its model's directory, with the weights.

A model directory copied elsewhere then explains itself: what it was trained from and against,
with which method (loss, beta, recipe, or RLOO's KL coefficient and steps), on which data, with
which precision, seed, LoRA and processes, how long it took, and the lines that load it. It holds
what is known when the model is saved; the evaluation comes later and lives in the run's
`report.md` and `results.csv`. With the plan item (a training within a run) the card also names
the reward classifier, the pair rule and the model's place in an iterative chain. The YAML header
follows the Hugging Face hub's model-card metadata (`library_name`, `base_model`, `tags`).
"""

from __future__ import annotations

import json

from prefalign.training.job import DpoJob, RlooJob


def _precision(settings: dict) -> str:
    return "bf16 autocast" if settings.get("bf16") else "TF32" if settings.get("tf32") else "fp32"


def _reward_line(reward) -> str:
    """The sentence naming the classifier whose preferences the model was aligned to."""
    logit = "single logit" if reward.single_logit else f"`{reward.positive_label}` logit"
    return (
        f"A causal language model aligned by prefalign to the preferences of the classifier `{reward.ref}` "
        f"(reward: its {logit})."
    )


def _dpo_facts(job: DpoJob, info: dict) -> dict:
    """What a DPO model's card says about its method and data (and, with the item, its run)."""
    from prefalign.pipeline.items import IterativeRound

    item = job.item
    method = f"TRL DPOTrainer, loss `{info['loss']}`, beta {job.beta:g}, recipe `{job.recipe}`"
    data = f"{info.get('pairs', '?')} chosen/rejected pairs"
    facts = {"base": job.reference_model, "start": job.policy_ref, "tags": ["dpo", info["loss"]], "reward": None}
    if item is not None:
        rule = ", ".join(f"{k} {v}" for k, v in item.pairs.rule.items())
        data += f" by the `{item.pairs.strategy}` rule" + (f" ({rule})" if rule else "")
        data += f", from {item.pairs.samples.count} scored samples"
        if isinstance(item, IterativeRound):
            method += f", round {item.round} of the on-policy chain {item.chain}"
        start = item.start.name
        facts.update(start=item.reference.ref if start == "original" else f"{start} (this run's models/)")
        facts["reward"] = item.pairs.samples.reward
    return {**facts, "method": method, "data": data}


def _rloo_facts(job: RlooJob, info: dict) -> dict:
    """What an RLOO model's card says about its method and data."""
    return {
        "base": job.policy_ref,
        "start": job.policy_ref,
        "tags": ["rloo"],
        "reward": job.item.reward if job.item is not None else None,
        "method": f"online RL with TRL's RLOOTrainer, KL coefficient {job.kl_coef:g}, {job.steps} steps",
        "data": "its own samples, scored by the reward classifier during training",
    }


def model_card(job: DpoJob | RlooJob, info: dict) -> str:
    """The README.md of the model `job` trained, from `info` (what its train.json holds)."""
    facts = _dpo_facts(job, info) if isinstance(job, DpoJob) else _rloo_facts(job, info)
    settings = info.get("settings", {})
    # A policy with code of its own (policy.trust_remote_code) saves that code beside its weights.
    own_code = ", trust_remote_code=True" if job.trust_remote_code else ""
    lines = [
        "---",
        "library_name: transformers",
        f"base_model: {json.dumps(facts['base'])}",
        "tags: [" + ", ".join(["prefalign", "preference-alignment", *facts["tags"]]) + "]",
        "---",
        "",
        f"# {job.run_name}",
        "",
        *([_reward_line(facts["reward"]), ""] if facts["reward"] is not None else []),
        "## Training",
        "",
        f"- trained from: `{facts['start']}`; reference: `{facts['base']}`",
        f"- method: {facts['method']}",
        f"- data: {facts['data']}",
        f"- settings: {_precision(settings)}, seed {settings.get('seed', '?')}, "
        f"{info.get('train_seconds', '?')} s of training" + (f", LoRA {info['lora']}" if info.get("lora") else ""),
        f"- processes: {info.get('world_size', 1)}" + (f" ({info['parallel']})" if info.get("parallel") else ""),
        "",
        "## Evaluation",
        "",
        "Not in this card, which is written when the model is saved: the evaluation of the run that trained "
        "it is in that run directory's `report.md` and `results.csv`.",
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
