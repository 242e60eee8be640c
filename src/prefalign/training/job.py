"""Training jobs: everything one training needs, as one frozen value.

A `DpoJob` says what the DPO training of one model reads (the pair file, the starting weights and
the reference), how it trains (loss, beta, recipe and its overrides, precision, seed, LoRA), where it
writes (the model directory, its key) and among which processes and trackers. An `RlooJob` says the
same for an online RLOO training. The `train` stage builds them from a plan item and the run's
services (`from_item`); the benchmarks and tests build them directly. The job holds no loaded model:
the training functions load what it names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from prefalign.pipeline.distributed import Ranks
from prefalign.training.trackers import Tracking

if TYPE_CHECKING:
    from prefalign.config.schema import SamplingConfig
    from prefalign.config.train import LossMix
    from prefalign.pipeline.items import DpoModel, RlooModel
    from prefalign.pipeline.services import Services


def _cpu() -> torch.device:
    return torch.device("cpu")


@dataclass(frozen=True)
class DpoJob:
    """One DPO training: TRL's DPOTrainer from `policy_ref` on the pairs of `pairs_path`, into `out_dir`."""

    pairs_path: Path  # a parquet file with `prompt`, `chosen` and `rejected` columns
    policy_ref: str  # the starting weights: a model reference (models.loading.resolve) or a directory
    out_dir: Path  # the model directory, written atomically
    recipe: str = "default"  # a name of config.recipes.RECIPES
    loss: str | LossMix = "sigmoid"  # a `train.losses` entry (see dpo_settings.resolve_loss)
    beta: float = 0.1
    overrides: dict[str, Any] = field(default_factory=dict)  # DPOConfig fields and prefalign's own switches
    device: torch.device = field(default_factory=_cpu)
    seed: int = 0
    policy_revision: str | None = None
    # The reference when it is not the starting weights (an iterative round starts from the round
    # before and keeps the original): its ref and revision. None: a frozen copy of the starting weights.
    reference_ref: str | None = None
    reference_revision: str | None = None
    slic_sft_weight: float = 0.1  # the SFT term's weight in the `slic` loss
    precision: str | None = None  # train.precision (None: the recipe's)
    # How often a resumable Trainer checkpoint is saved (beside out_dir, holding `key`); None: never.
    checkpoint_steps: int | None = None
    lora: dict[str, Any] | None = None  # train.lora's settings, or None to train every weight
    key: str = ""  # the item's key, written into train.json (and the checkpoints' folder)
    name: str | None = None  # the run name the trackers log under (default: out_dir's name)
    trust_remote_code: bool = False  # whether loading the policy may run its checkpoint's own code
    ranks: Ranks = field(default_factory=Ranks)  # the processes training this model together
    launch: dict[str, Any] = field(default_factory=dict)  # what train.json says about the run's processes
    tracking: Tracking = field(default_factory=Tracking)  # the experiment trackers to log to
    item: DpoModel | None = None  # the plan item this training makes, for its model card (None outside a run)

    @property
    def run_name(self) -> str:
        return self.name or Path(self.out_dir).name

    @property
    def reference_model(self) -> str:
        """What the model is measured against: the reference's ref, else the starting weights'."""
        return self.reference_ref or self.policy_ref

    @classmethod
    def from_item(cls, item: DpoModel, services: Services) -> DpoJob:
        """The training of a `DpoModel` (or `IterativeRound`) item in this run's process(es)."""
        from prefalign.pipeline.items import trusts_code

        start, reference = item.start, item.reference
        return cls(
            pairs_path=item.pairs.path,
            policy_ref=start.ref,
            out_dir=item.path,
            recipe=item.recipe,
            loss=item.loss,
            beta=item.beta,
            overrides=item.overrides,
            device=services.device,
            seed=item.seed,
            policy_revision=start.revision,
            reference_ref=None if start is reference else reference.ref,
            reference_revision=None if start is reference else reference.revision,
            slic_sft_weight=item.slic_sft_weight,
            precision=item.precision,
            checkpoint_steps=item.checkpoint_steps,
            lora=item.lora,
            key=item.key,
            name=item.name,
            trust_remote_code=trusts_code(item),
            ranks=services.ranks,
            launch=dict(services.launch),
            tracking=services.tracking,
            item=item,
        )


@dataclass(frozen=True)
class RlooJob:
    """One RLOO training: TRL's RLOOTrainer from `policy_ref` for `steps` steps, into `out_dir`."""

    policy_ref: str  # the starting weights (the original policy)
    out_dir: Path  # the model directory, written atomically
    kl_coef: float  # TRL's `beta`: the weight of the KL estimate subtracted from the reward
    steps: int
    overrides: dict[str, Any] = field(default_factory=dict)  # RLOOConfig fields, applied last
    device: torch.device = field(default_factory=_cpu)
    seed: int = 0
    policy_revision: str | None = None
    sampling: SamplingConfig | None = None  # prefalign's sampler settings (None: train_rloo.RLOO_DEFAULTS')
    positive_label: str = "POSITIVE"  # the reward classifier's class whose logit is the reward
    single_logit: bool = False  # a one-output classifier: its logit is the reward
    key: str = ""  # the item's key, written into train.json
    name: str | None = None  # the run name the trackers log under (default: out_dir's name)
    trust_remote_code: bool = False
    launch: dict[str, Any] = field(default_factory=dict)  # what train.json says about the run's processes
    tracking: Tracking = field(default_factory=Tracking)
    item: RlooModel | None = None  # the plan item this training makes, for its model card (None outside a run)

    @property
    def run_name(self) -> str:
        return self.name or Path(self.out_dir).name

    @classmethod
    def from_item(cls, item: RlooModel, services: Services, positive_label: str) -> RlooJob:
        """The training of an `RlooModel` item; `positive_label`: the loaded classifier's positive class."""
        return cls(
            policy_ref=item.start.ref,
            out_dir=item.path,
            kl_coef=item.kl_coef,
            steps=item.steps,
            overrides=item.overrides,
            device=services.device,
            seed=item.seed,
            policy_revision=item.start.revision,
            sampling=item.sampling,
            positive_label=positive_label,
            single_logit=item.reward.single_logit,
            key=item.key,
            name=item.name,
            trust_remote_code=item.start.trust_remote_code,
            launch=dict(services.launch),
            tracking=services.tracking,
            item=item,
        )
