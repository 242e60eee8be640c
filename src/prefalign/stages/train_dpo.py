"""The `train` stage for `DpoModel` and `IterativeRound` items: TRL's DPOTrainer on one pair file.

A grid model starts from the original weights and an iterative round from the previous round's;
the reference is always the original, passed explicitly as a frozen copy (TRL would otherwise try
to reload it from the hub by name), and the preference data is the item's pair file. The loss is
TRL's: `sigmoid` is DPO, `hinge` is SLiC's hinge as TRL implements it (`relu(1 - beta * delta)`,
so beta is the reciprocal of the margin), `ipo` is IPO; any list of TRL loss types with weights is
a weighted sum; `slic` is `["hinge", "sft"]` with weights `[1, slic_sft_weight]`, i.e. hinge plus
a cross-entropy term on the chosen text, the regularised objective of the SLiC-HF paper. The
recipe (config/recipes.py: `seed`, the original's settings, or `default`) sets the rest, and any
`trl.DPOConfig` field in `train.dpo` overrides it (training/dpo_settings.py). The trainer is
prefalign's LeanDPOTrainer (engine/lean_dpo.py: the same loss with fewer host syncs) on the TRL
releases it was checked against, TRL's own DPOTrainer on any other (engine/trl_compat.py). The
model is written with `save_pretrained` (safetensors) plus its tokenizer, its model card
(README.md, training/model_card.py) and `train.json` (settings, metrics, number of processes), to
a temporary directory renamed when complete.

With `train.lora`, peft adapters are trained instead of the weights (training/lora.py), the
reference being the base model with its adapters disabled; the directory then holds the merged
model and `adapter/`. When the run's processes train one model together (`parallel: data`), the
Trainer's distributed path splits each batch between them, and the main process writes the model
once it has checked that every process holds the same weights. Run alone with:

    prefalign train CONFIG
"""

from __future__ import annotations

import contextlib
import copy
import shutil
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import torch
from transformers import PrinterCallback

from prefalign.engine.arithmetic import fp32_switches_restored
from prefalign.engine.lean_loss import fixed_pad_length
from prefalign.engine.trl_compat import completion_tokens_only, lean_trainer_usable, unchecked_note
from prefalign.errors import TrainingDiverged
from prefalign.pipeline.distributed import weights_digest
from prefalign.pipeline.items import DpoModel
from prefalign.pipeline.services import Services, release_memory
from prefalign.pipeline.store import read_parquet
from prefalign.stages.trajectory import trajectory_callbacks
from prefalign.training.dpo_data import drop_shared, length_grouped, pairs_dataset
from prefalign.training.dpo_settings import device_traits, dpo_settings, resolve_loss
from prefalign.training.job import DpoJob
from prefalign.training.lora import lora_config
from prefalign.training.model_card import model_card
from prefalign.training.progress import LogLine, StepClock
from prefalign.training.trackers import reporting
from prefalign.training.trained_model import (
    checkpoint_dir,
    checkpoint_path,
    config_as_loaded,
    last_complete_checkpoint,
    restore_config,
    save_gathered,
    save_trained,
)


def train_dpo(item: DpoModel, services: Services) -> None:
    """Train a `DpoModel` (or `IterativeRound`) item into its directory (with evaluate.during_training,
    its trajectory too: stages/trajectory.py)."""
    services.log(f"train {item.name}")
    train_one(DpoJob.from_item(item, services), log=services.log, callbacks=trajectory_callbacks(item, services))
    release_memory()


class _Models(NamedTuple):
    """What a DPO training loads: the policy, its tokenizer and config as loaded, LoRA, the reference."""

    policy: torch.nn.Module
    tokenizer: object
    loaded: dict  # trained_model.config_as_loaded(policy), restored before saving
    peft_config: object | None
    reference: torch.nn.Module | None  # None: the policy with its adapters disabled (LoRA)


def train_one(job: DpoJob, log=print, callbacks=()) -> dict:
    """Train one model on one pair file; write it, its card and its train.json (holding `job.key`) to
    `job.out_dir` atomically, and return what train.json holds.

    `callbacks`: extra transformers TrainerCallbacks (benchmarks time the steps with one; a callback
    with a `resumes_from(step)` method that says no keeps a checkpoint of that step from being resumed). With
    `job.checkpoint_steps`, a Trainer checkpoint is saved that often into `.<out_dir name>.checkpoints/`
    beside `out_dir` (holding the key); a later call with the same key resumes from the last one,
    and they are removed once the model is saved. Every process of `job.ranks` calls this; the main
    process writes the outputs.
    """
    from trl import DPOConfig

    from prefalign.models.loading import positions

    models = _load_models(job, log)
    pairs = read_parquet(job.pairs_path, columns=["prompt", "chosen", "rejected"])
    scratch, resume = _trainer_dir(job, callbacks, log)
    tracker = contextlib.ExitStack()  # the trackers' environment, set until the training is over
    shared = None
    try:
        fields = tracker.enter_context(reporting(job.tracking, job.run_name, fresh=resume is None))
        tracker.enter_context(fp32_switches_restored())  # the TrainingArguments below set TF32 for the process
        trl_settings, settings = dpo_settings(
            job, device_traits(job.device), scratch, fields, positions(models.policy.config)
        )
        args = DPOConfig(**trl_settings)
        if settings.get("group_by_length"):
            pairs = length_grouped(pairs, models.tokenizer, args.per_device_train_batch_size, job.seed)
        dataset, shared = pairs_dataset(pairs, job.out_dir, job.ranks)
        t0 = time.time()
        with completion_tokens_only() if settings.get("completion_only_head") else contextlib.nullcontext():
            # Timed from here: with precomputed reference log-probs the constructor runs the reference pass.
            trainer, clock = _make_trainer(job, models, args, dataset, settings, log, callbacks)
            result = _fit(trainer, resume, job, args.learning_rate, log)
        seconds = time.time() - t0
        timing = {
            "train_seconds": round(seconds, 2),
            "pairs_per_second": round(len(pairs) * args.num_train_epochs / seconds, 2),
            **clock.timings(t0, args.per_device_train_batch_size * job.ranks.count),
        }
        info = _train_info(job, trainer, result, len(pairs), settings, resume, timing)
        _save(job, trainer, models, info)
        if job.checkpoint_steps and job.ranks.main:
            shutil.rmtree(scratch, ignore_errors=True)  # the model is saved: its checkpoints are done with
        last = next((h for h in reversed(trainer.state.log_history) if "loss" in h), {})
        log(f"  trained in {seconds:.1f}s, last logged loss {last.get('loss', float('nan')):.4f}")
        return info
    finally:
        tracker.close()
        if not job.checkpoint_steps:
            shutil.rmtree(scratch, ignore_errors=True)
        drop_shared(shared, job.ranks)


def _load_models(job: DpoJob, log) -> _Models:
    """The policy to train and its tokenizer, the LoRA config, and the frozen reference: a copy of
    the starting weights taken in memory, or `job.reference_ref` read from its checkpoint."""
    from transformers import AutoModelForCausalLM

    from prefalign.models.loading import from_pretrained, load_policy_to_train, resolve

    model, tokenizer = load_policy_to_train(job.policy_ref, job.policy_revision, job.trust_remote_code)
    loaded = config_as_loaded(model)
    peft_config = lora_config(job.lora, model, job.policy_ref, log) if job.lora else None
    if job.reference_ref is None and job.lora:
        ref_model = None  # TRL scores the reference with the adapters disabled
    elif job.reference_ref is None:
        ref_model = copy.deepcopy(model).eval()
    else:
        ref_model = from_pretrained(
            AutoModelForCausalLM,
            resolve(job.reference_ref, "policy"),
            "policy",
            job.reference_revision,
            job.trust_remote_code,
            dtype=torch.float32,
        ).eval()
    if ref_model is not None:
        ref_model.requires_grad_(False)
    return _Models(model, tokenizer, loaded, peft_config, ref_model)


def _trainer_dir(job: DpoJob, callbacks=(), log=print) -> tuple[str, str | None]:
    """(the Trainer's output directory, the checkpoint to resume from or None): a temporary
    directory, or with `job.checkpoint_steps` the model's checkpoint folder (checkpoints of another
    key and a partial last one removed first, and every one when a callback cannot resume from the last)."""
    if not job.checkpoint_steps:
        return tempfile.mkdtemp(prefix="prefalign-trainer-"), None
    out_dir = Path(job.out_dir)
    resume = None
    if job.ranks.main:  # the main process empties stale checkpoints and drops a partial one ...
        resume = last_complete_checkpoint(checkpoint_dir(out_dir, job.key))
        step = int(Path(resume).name.split("-")[-1]) if resume else 0
        if resume and not all(getattr(c, "resumes_from", lambda _: True)(step) for c in callbacks):
            log(f"  not resuming from {Path(resume).name}: the trajectory's rows up to it are not on disk")
            shutil.rmtree(checkpoint_path(out_dir))
            checkpoint_dir(out_dir, job.key)
            resume = None
    job.ranks.wait()  # ... before any process reads the folder
    return str(checkpoint_path(out_dir)), resume or last_complete_checkpoint(checkpoint_path(out_dir))


def dpo_trainer_class(log):
    """LeanDPOTrainer on a TRL release whose internals it was checked against, else TRL's own
    DPOTrainer (the same training, without prefalign's speed-ups), said in one log line."""
    if lean_trainer_usable():
        from prefalign.engine import lean_dpo

        return lean_dpo.LeanDPOTrainer
    from trl import DPOTrainer

    log(unchecked_note("the training runs TRL's own DPOTrainer"))
    return DPOTrainer


def _make_trainer(job: DpoJob, models: _Models, args, dataset, settings: dict, log, callbacks):
    """(the trainer, its StepClock), with the log's callbacks and, for a compiled step, every batch
    padded to one length."""
    trainer = dpo_trainer_class(log)(
        model=models.policy,
        ref_model=models.reference,
        args=args,
        train_dataset=dataset,
        processing_class=models.tokenizer,
        peft_config=models.peft_config,
    )
    lean = getattr(trainer, "lean", None)  # only LeanDPOTrainer compiles its step
    if settings["compile_step"] != "eager" and lean is not None and lean():
        # One shape for the compiled step: every batch padded to the longest pair.
        trainer.compile_step, trainer.note = settings["compile_step"], log
        trainer.data_collator.pad_to_multiple_of = fixed_pad_length(trainer.train_dataset, args.max_length)
    # One short line per logging step instead of the Trainer's metric dicts.
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(LogLine(log))
    clock = StepClock()
    for callback in [clock, *callbacks]:
        trainer.add_callback(callback)
    return trainer, clock


def _fit(trainer, resume: str | None, job: DpoJob, learning_rate: float, log):
    """trainer.train(), from `resume` when given; a diverged training says what to change."""
    if resume:
        log(f"  resuming from {Path(resume).name} (a checkpoint of an interrupted training)")
    try:
        return trainer.train(resume_from_checkpoint=resume)
    except TrainingDiverged as e:
        raise TrainingDiverged(
            f"training {Path(job.out_dir).name} diverged: {e}; nothing was saved. Lower the learning rate "
            f"(train.dpo.learning_rate; the {job.recipe!r} recipe's is {learning_rate:g}) or change beta / "
            f"the loss, then rerun: finished models are kept."
        ) from None


def _train_info(job: DpoJob, trainer, result, pairs: int, settings: dict, resume, timing: dict) -> dict:
    """What train.json says about the training; `timing`: its seconds and rates."""
    return {
        "key": job.key,
        "recipe": job.recipe,
        "loss": resolve_loss(job.loss, job.slic_sft_weight)[0],
        "beta": job.beta,
        "base_model": job.policy_ref,
        "reference_model": job.reference_model,
        "pairs_file": str(job.pairs_path),
        "pairs": pairs,
        "settings": {k: v for k, v in settings.items() if k != "output_dir"},
        "resumed_from": Path(resume).name if resume else None,
        **timing,
        # as it ran: eager if not asked for, not possible or failed
        "step_compiled_as": getattr(trainer, "compile_step", "eager"),
        "trainer": type(trainer).__name__,  # LeanDPOTrainer, or TRL's DPOTrainer on an unchecked TRL
        "metrics": result.metrics,
        "world_size": 1,
        **job.launch,
        "lora": job.lora,
        "log_history": trainer.state.log_history,
    }


def _save(job: DpoJob, trainer, models: _Models, info: dict) -> None:
    """Write the trained model, its card and `info` to `job.out_dir` (the main process; every process
    when the weights are sharded over them), once the processes training it together agree on its
    weights."""
    ranks, out_dir = job.ranks, Path(job.out_dir)
    trained = trainer.accelerator.unwrap_model(trainer.model)
    sharded = trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled  # weights split over the processes
    if ranks.count > 1 and not sharded:
        digests = ranks.gather(weights_digest(trained))
        info["weights_digests"] = [f"{d:016x}" for d in digests]
        if len(set(digests)) > 1:
            raise RuntimeError(
                f"the processes training {out_dir.name} together ended with different "
                f"weights ({info['weights_digests']}); nothing was saved"
            )
    restore_config(trained, models.loaded)
    card = model_card(job, info)
    if sharded:
        save_gathered(trainer, models.tokenizer, info, out_dir, ranks, card)
    elif ranks.main:
        save_trained(trained, models.tokenizer, info, out_dir, job.lora is not None, card)
