"""The `train` section of the experiment config (and the loss entries and LoRA settings it holds).

config.py assembles it with the other sections into `Config`. Every field has a default and help
text; validators check what can be checked before anything runs.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from prefalign.config.recipes import OWN_SETTINGS, PRECISIONS, RECIPE_NAMES
from prefalign.config.section import Section
from prefalign.config.trainer_fields import TRL_LOSSES, check_loss, dpo_fields
from prefalign.engine.pair_rules import PAIR_RULES
from prefalign.training.trackers import TRACKER_NAMES, missing_trackers


class LossMix(Section):
    types: list[str] = Field(..., min_length=1, description="TRL `loss_type` values combined in one objective.")
    weights: list[float] | None = Field(None, description="TRL `loss_weights`, one per type (default: all 1).")
    name: str | None = Field(None, description="Name in model names and tables (default: built from the parts).")

    @model_validator(mode="after")
    def _check(self):
        for t in self.types:
            if t not in TRL_LOSSES:
                raise ValueError(f"unknown loss {t!r} in types; TRL 1.16 supports {', '.join(TRL_LOSSES)}")
        if self.weights is not None and len(self.weights) != len(self.types):
            raise ValueError(f"{len(self.weights)} weights for {len(self.types)} types")
        if self.weights is not None and any(w < 0 for w in self.weights):
            raise ValueError("loss weights must be >= 0")
        if self.name is not None and not re.fullmatch(r"[A-Za-z0-9_.+]+", self.name):
            raise ValueError(f"loss name {self.name!r}: use letters, digits, _ . + only (it names directories)")
        return self

    def label(self) -> str:
        if self.name:
            return self.name
        weights = self.weights or [1.0] * len(self.types)
        return "+".join(t if w == 1 else f"{w:g}{t}" for t, w in zip(self.types, weights))


def loss_label(entry: str | LossMix) -> str:
    return entry if isinstance(entry, str) else entry.label()


class ExtraPoint(Section):
    strategy: str = Field(..., description="Pair rule (one of pairs.strategies' choices).")
    loss: str | LossMix = Field(..., description="A loss entry as in train.losses.")
    beta: float = Field(..., gt=0, description="DPO beta.")
    recipe: Literal[RECIPE_NAMES] | None = Field(None, description="Recipe (default: train.recipe).")

    _loss = field_validator("loss")(classmethod(lambda cls, v: check_loss(v)))

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, v: str) -> str:
        if v not in PAIR_RULES:
            raise ValueError(f"unknown pair strategy {v!r}; one of {', '.join(PAIR_RULES)}")
        return v


class LoraSettings(Section):
    r: int = Field(16, ge=1, description="Rank of the LoRA update matrices.")
    alpha: float = Field(32, gt=0, description="LoRA scaling numerator (the update is scaled by alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA branch during training.")
    target_modules: list[str] | str | None = Field(
        None,
        description="Module names to adapt (e.g. `[c_attn, c_proj]` for GPT-2, `[q_proj, v_proj]` for Llama), or "
        "`all-linear`. Empty: peft's default for the architecture, or its linear layers but the output head where "
        "peft has none (Phi-3, Mamba, Jamba, ...); layers peft refuses on the architecture (a Mamba's `out_proj`) are "
        "left out of `all-linear`.",
    )


class TrainConfig(Section):
    recipe: Literal[RECIPE_NAMES] = Field(
        "default",
        description="`seed`: the original experiment's settings (RMSprop, lr 5e-3, 50 warmup steps, "
        "3 epochs, batch 8, max_length 256; TF32 matrix multiplies on CUDA, fp32 elsewhere). `default`: TRL's defaults plus precomputed "
        "reference log-probs, tuned for this task (see recipes.py).",
    )
    losses: list[str | LossMix] = Field(
        default_factory=lambda: ["sigmoid", "hinge"],
        min_length=1,
        description="Losses to train, one model each: a DPOTrainer `loss_type` (sigmoid = DPO, hinge = "
        f"SLiC's hinge as TRL implements it, ipo, ...; any of: {', '.join(TRL_LOSSES)}); `slic` = hinge "
        "plus `slic_sft_weight` x cross-entropy on the chosen text (SLiC-HF's regularised form); or a "
        "mapping `{types: [...], weights: [...], name: ...}` for a weighted combination.",
    )
    precision: Literal[PRECISIONS] | None = Field(
        None,
        description="Training arithmetic: `fp32`; `bf16` (autocast with fp32 master weights); `tf32` (fp32 with "
        "TF32 matrix multiplies on CUDA GPUs that have them, Ampere and later; fp32 elsewhere); `auto` (bf16 on "
        "CUDA GPUs that support it, fp32 elsewhere). Empty: the recipe's (`seed`: tf32; the original ran in fp32, "
        "which `fp32` restores; `default`: auto). Lower precision stayed within fp32's seed-to-seed differences in reward, "
        'diversity and KL (benchmarks/RESULTS.md, "Training precision"); on an H100 a `seed` step took 17.7-19.1 ms '
        "in TF32, 28-31 ms in fp32. `train.dpo.bf16` / `tf32` override it.",
    )
    slic_sft_weight: float = Field(
        0.1, ge=0, description="`slic`: weight of the cross-entropy term (TRL's `sft` loss) next to hinge at weight 1."
    )
    betas: list[float] = Field(
        default_factory=lambda: [0.1, 1.0], min_length=1, description="DPO beta values, one model each."
    )
    dpo: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra `trl.DPOConfig` fields, applied on top of the recipe (e.g. "
        "`{learning_rate: 1e-5, num_train_epochs: 1}`). Names, types, choices (`optim`, `lr_scheduler_type`, ...) "
        "and the usual bounds are checked before any work; `torch_compile`, `push_to_hub` and evaluation during "
        "training are refused (see their messages). Also accepts "
        + "; ".join(f"`{k}` ({v})" for k, v in OWN_SETTINGS.items())
        + ".",
    )
    seed: int = Field(0, ge=0, description="Training seed (data order, dropout).")
    repeats: int = Field(
        1,
        ge=1,
        description="Train every model (grid, extra, iterative chains, RLOO) this many times, with training seeds "
        "`seed`, `seed`+1, ...; the repeats after the first are named `<model>-seed<s>`. Tables, plots and the "
        "Pareto and `seed`-recipe checks then use the mean and std across training seeds (at lr 5e-3 one seed "
        "can move a cell by 0.2).",
    )
    checkpoint_steps: int | None = Field(
        None,
        ge=1,
        description="Save a trainer checkpoint (weights, optimizer, scheduler, RNG, data position) every N steps "
        "beside the model's directory, so a killed training resumes from the last one with the same result; "
        "removed once the model is saved. Empty: none (a killed training restarts from step 0).",
    )
    side_by_side: int = Field(
        1,
        ge=1,
        description="How many grid models train at once, each in its own process: on the run's device, or spread "
        "round-robin over all GPUs when `device` is `auto`/`cuda` on a machine with several. On one H200, 4 gave "
        "~1.6x with TF32 training (a small model's steps leave the GPU partly idle) and nothing in fp32 "
        "(benchmarks/RESULTS.md); "
        "results are the same. 1: one after another. Iterative rounds always run in order.",
    )
    parallel: Literal["grid", "data"] | None = Field(
        None,
        description="With several processes (`--num-processes`, `accelerate launch`): `grid` trains whole models, "
        "each on one process (its GPU); `data` trains each model on all processes together (DDP, or FSDP / "
        "DeepSpeed from the accelerate config), each step's batch split between them, so the recipe's batch is "
        "kept. Empty: `grid` for a batch of models at least as many as the processes, else `data`.",
    )
    lora: LoraSettings | None = Field(
        None,
        description="Train LoRA adapters (peft) instead of every weight: `{r, alpha, dropout, target_modules}`. The "
        "reference is then the base model with the adapters disabled (no second copy in memory); each model "
        "directory holds the merged weights (what evaluation loads) and the adapters in `adapter/`.",
    )

    report_to: list[Literal[TRACKER_NAMES]] = Field(
        default_factory=list,
        description="Experiment trackers every trainer (DPO, iterative rounds, RLOO) logs its metrics to: "
        "`tensorboard` (event files in RUN_DIR/logs/tensorboard/<model>/; view with `tensorboard --logdir "
        "RUN_DIR/logs/tensorboard`) and / or `trackio` (local, project = `name`, in RUN_DIR/logs/trackio/; view "
        "with `TRACKIO_DIR=RUN_DIR/logs/trackio trackio show`). The tracker's package must be installed "
        "(`pip install tensorboard` or `trackio`). Empty: none. Changes no result.",
    )

    extra: list[ExtraPoint] = Field(
        default_factory=list,
        description="Models to train besides the product strategies x losses x betas: each "
        "`{strategy, loss, beta, recipe}` (e.g. a new pair rule at one beta only).",
    )

    @field_validator("report_to")
    @classmethod
    def _trackers_installed(cls, v: list[str]) -> list[str]:
        missing = missing_trackers(v)
        if missing:
            raise ValueError(
                f"{' and '.join(missing)} not installed here: `pip install {' '.join(missing)}`, "
                "or remove it from report_to"
            )
        return list(dict.fromkeys(v))

    @field_validator("losses")
    @classmethod
    def _known_losses(cls, v: list) -> list:
        for loss in v:
            check_loss(loss)
        labels = [loss_label(x) for x in v]
        if len(set(labels)) != len(labels):
            raise ValueError("losses must not repeat")
        return v

    @field_validator("betas")
    @classmethod
    def _positive_betas(cls, v: list[float]) -> list[float]:
        if any(b <= 0 for b in v):
            raise ValueError("every beta must be > 0")
        if len(set(v)) != len(v):
            raise ValueError("betas must not repeat")
        return v

    @field_validator("dpo")
    @classmethod
    def _known_dpo_fields(cls, v: dict[str, Any]) -> dict[str, Any]:
        return dpo_fields(v, "train.betas / train.losses")
