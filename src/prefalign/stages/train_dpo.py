"""The `train` stage for `DpoModel` and `IterativeRound` items: TRL's DPOTrainer on one pair file.

A grid model starts from the original weights and an iterative round from the previous round's;
the reference is always the original, passed explicitly as a frozen copy (TRL would otherwise try
to reload it from the hub by name), and the preference data is the item's pair file. The loss is
TRL's: `sigmoid` is DPO, `hinge` is SLiC's hinge as TRL implements it (`relu(1 - beta * delta)`,
so beta is the reciprocal of the margin), `ipo` is IPO; any list of TRL loss types with weights is
a weighted sum; `slic` is `["hinge", "sft"]` with weights `[1, slic_sft_weight]`, i.e. hinge plus
a cross-entropy term on the chosen text, the regularised objective of the SLiC-HF paper. The
recipe (recipes.py: `seed`, the original's settings, or `default`) sets the rest, and any
`trl.DPOConfig` field in `train.dpo` overrides it. The model is written with `save_pretrained`
(safetensors) plus its tokenizer and `train.json` (settings, metrics, number of processes), to a
temporary directory renamed when complete.

With `train.lora`, peft adapters are trained instead of the weights, the reference being the base
model with its adapters disabled; the directory then holds the merged model and `adapter/`. When
the run's processes train one model together (`parallel: data`), the Trainer's distributed path
splits each batch between them, and the main process writes the model once it has checked that
every process holds the same weights. Run alone with:

    prefalign train CONFIG
"""

from __future__ import annotations

import contextlib
import copy
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import PrinterCallback, TrainerCallback

from prefalign.config.recipes import OWN_SETTINGS, RECIPE_PRECISION, RECIPES, precision_settings
from prefalign.engine.arithmetic import fp32_switches_restored
from prefalign.engine.lean_loss import fixed_pad_length
from prefalign.engine.trl_compat import completion_tokens_only
from prefalign.errors import TrainingDiverged
from prefalign.pipeline.distributed import Ranks, weights_digest
from prefalign.pipeline.items import DpoModel, trusts_code
from prefalign.pipeline.services import Services, release_memory
from prefalign.pipeline.store import read_parquet, scratch_beside
from prefalign.training.trackers import Tracking, reporting
from prefalign.training.trained_model import (
    checkpoint_dir,
    checkpoint_path,
    config_as_loaded,
    last_complete_checkpoint,
    restore_config,
    save_gathered,
    save_trained,
)


class _LogLine(TrainerCallback):
    def __init__(self, log):
        self.log = log

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            acc = logs.get("rewards/accuracies", float("nan"))
            self.log(
                f"  step {state.global_step}/{state.max_steps}: loss {float(logs['loss']):.4f}, "
                f"reward accuracy {float(acc):.2f}, margin {float(logs.get('rewards/margins', float('nan'))):.3f}"
            )


class _StepClock(TrainerCallback):
    """Wall times of the training's start, the end of its first step (compilation happens there) and
    its end, so train.json can tell one-off costs from the per-step rate."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.begin, self.first, self.first_step = time.time(), None, state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        if self.first is None:
            self.first, self.first_step = time.time(), state.global_step

    def on_train_end(self, args, state, control, **kwargs):
        self.end, self.last_step = time.time(), state.global_step


def length_grouped_order(lengths, batch_size: int, seed: int, megabatch: int = 50) -> np.ndarray:
    """A random order of the examples in which every run of `batch_size` has similar lengths.

    As transformers' LengthGroupedSampler: shuffle, cut into megabatches of `megabatch * batch_size`,
    sort each megabatch by length, longest first. Each batch is then padded to nearly its own
    length, and the reference pre-pass (which reads the data in this order) pads little too.
    """
    lengths = np.asarray(lengths)
    perm = np.random.default_rng(seed).permutation(len(lengths))
    size = max(1, megabatch * batch_size)
    chunks = [perm[i : i + size] for i in range(0, len(perm), size)]
    return np.concatenate([c[np.argsort(-lengths[c], kind="stable")] for c in chunks]) if chunks else perm


def resolve_loss(entry, slic_sft_weight: float = 0.1) -> tuple[str, list[str], list[float] | None]:
    """(label, TRL loss types, TRL loss weights) of a `train.losses` entry."""
    if entry == "slic":
        return "slic", ["hinge", "sft"], [1.0, slic_sft_weight]
    if isinstance(entry, str):
        return entry, [entry], None
    return entry.label(), list(entry.types), list(entry.weights) if entry.weights is not None else None


def dpo_args(
    recipe: str,
    loss: str | list[str],
    beta: float,
    overrides: dict,
    device: torch.device,
    seed: int,
    output_dir: str,
    loss_weights: list[float] | None = None,
    precision: str | None = None,
    checkpoint_steps: int | None = None,
    processes: int = 1,
    tracker: dict | None = None,
    positions: int | None = None,
):
    """(DPOConfig, every setting) of one training; with `processes` > 1 training one model together,
    each takes 1/processes of the recipe's batch, so a step still sees the recipe's batch.
    `tracker`: the experiment-tracker fields from trackers.reporting (default: report to none).
    `positions`: the policy's position limit; a longer `max_length` is lowered to it."""
    from transformers import training_args
    from trl import DPOConfig

    bf16_supported = device.type == "cuda" and torch.cuda.is_bf16_supported()
    tf32_supported = device.type == "cuda" and training_args.is_torch_tf32_available()  # TrainingArguments' own check
    arithmetic = precision_settings(precision or RECIPE_PRECISION[recipe], device.type, bf16_supported, tf32_supported)
    settings = {**RECIPES[recipe], **arithmetic, **overrides}
    own = {k: settings.pop(k) for k in list(settings) if k in OWN_SETTINGS}
    compile_step = own.get("compile_step", "eager")
    if compile_step == "auto":
        compile_step = "graphs" if device.type == "cuda" and processes == 1 else "eager"
    own["compile_step"] = "fused" if compile_step == "graphs" and device.type != "cuda" else compile_step
    if settings.get("precompute_ref_log_probs") == "on_gpu":
        settings["precompute_ref_log_probs"] = device.type == "cuda"
    if device.type == "cpu":
        settings.setdefault("use_cpu", True)
    if device.type == "cuda":
        # Batches go to the GPU from pinned memory without the host waiting for the copy: a blocking
        # copy waits for every kernel already queued, one host sync per input tensor and step.
        settings.setdefault("dataloader_pin_memory", True)
        settings.setdefault("accelerator_config", {"non_blocking": True})
    settings.update(
        output_dir=output_dir,
        loss_type=[loss] if isinstance(loss, str) else list(loss),
        beta=beta,
        seed=seed,
        data_seed=seed,
        **(tracker or {"report_to": "none"}),
        save_strategy="no",
        logging_steps=settings.get("logging_steps", 10),
        disable_tqdm=settings.get("disable_tqdm", True),
        # The Trainer's NaN/inf filter reads the loss on the host every step (a GPU sync); a NaN loss is logged as NaN.
        logging_nan_inf_filter=settings.get("logging_nan_inf_filter", False),
    )
    if positions and (settings.get("max_length") is None or settings["max_length"] > positions):
        # A pair longer than the model's positions would index past its position table: TRL truncates
        # it instead. Sampled texts fit, but decoding and re-encoding a text of broken byte tokens
        # (a collapsed policy's) can give more tokens than were sampled.
        settings["max_length"] = positions
    if checkpoint_steps:
        # The latest checkpoint only: it is all a resumed training needs.
        settings.update(save_strategy="steps", save_steps=checkpoint_steps, save_total_limit=1)
    if loss_weights is not None:
        settings["loss_weights"] = list(loss_weights)
    if processes > 1:
        settings["per_device_train_batch_size"] = settings["per_device_train_batch_size"] // processes
        # Every parameter gets a gradient each step; DDP's search for unused ones would only cost time.
        settings.setdefault("ddp_find_unused_parameters", False)
    if own.get("group_by_length"):
        # The pairs arrive already in length-grouped random order (see train_one).
        settings["train_sampling_strategy"] = "sequential"
    return DPOConfig(**settings), {**settings, **own}


def peft_refuses(model, name: str) -> bool:
    """Whether peft refuses to put LoRA on modules called `name` in this architecture (a Mamba's
    `out_proj` and `conv1d`), by peft's own check where it has one."""
    from peft import LoraConfig
    from peft.tuners import tuners_utils

    check = getattr(tuners_utils, "_check_lora_target_modules_mamba", None)
    try:
        if check is not None:
            check(LoraConfig(target_modules=[name]), model, name)
    except ValueError:
        return True
    return False


def linear_layers(model) -> tuple[list[str], list[str]]:
    """(the names (last part) of the model's linear layers but its output head, those of them peft
    agrees to adapt on this architecture)."""
    head = model.get_output_embeddings()
    is_linear = lambda m: isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"  # noqa: E731 (GPT-2's Conv1D)
    names = sorted(
        {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if module is not head and is_linear(module)}
    )
    return names, [name for name in names if not peft_refuses(model, name)]


def lora_config(lora: dict, model, policy_ref: str, log=print):
    """peft's LoraConfig for train.lora's settings, checked against the model's module names. Without
    `target_modules`, peft's default for the architecture, or its linear layers where peft has none;
    `all-linear` leaves out the layers peft refuses on the architecture."""
    from peft import LoraConfig
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

    from prefalign.models.loading import ModelLoadError

    targets, model_type = lora["target_modules"], getattr(model.config, "model_type", None)
    linear, accepted = linear_layers(model)
    if (targets is None and model_type not in PEFT_DEFAULTS) or (targets == "all-linear" and accepted != linear):
        why = "peft has no default target modules for" if targets is None else "peft refuses some linear layers of"
        targets = accepted
        log(
            f"  LoRA: {why} {model_type!r} models; adapting its linear layers {targets} (train.lora.target_modules "
            "chooses others)"
        )
    wanted = [targets] if isinstance(targets, str) else targets  # None: peft's default for the architecture
    modules: dict[str, set[str]] = {}  # module name (its last part) -> the classes of the modules so named
    for name, module in model.named_modules():
        modules.setdefault(name.rsplit(".", 1)[-1], set()).add(type(module).__name__)
    missing = [t for t in wanted or [] if t not in modules and t != "all-linear"]
    if missing:
        raise ModelLoadError(
            f"train.lora.target_modules: {missing} are not module names of {policy_ref} (it has "
            f"{sorted(n for n in modules if n)[:30]}); name some of its linear layers or use all-linear"
        )
    refused = [t for t in wanted or [] if t != "all-linear" and peft_refuses(model, t)]
    if refused:
        raise ModelLoadError(
            f"train.lora.target_modules: peft cannot adapt {refused} on {model_type!r} models; name "
            f"others of its linear layers ({', '.join(accepted)}) or use all-linear"
        )
    # GPT-2's layers are Conv1D, whose weight is stored transposed; peft must be told (it warns, then does so).
    adapted = modules if wanted in (None, ["all-linear"]) else {n: modules[n] for n in wanted if n in modules}
    fan_in_fan_out = any("Conv1D" in classes for classes in adapted.values())
    return LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=targets,
        fan_in_fan_out=fan_in_fan_out,
        task_type="CAUSAL_LM",
    )


def train_dpo(item: DpoModel, services: Services) -> None:
    """Train a `DpoModel` (or `IterativeRound`) item into its directory."""
    services.log(f"train {item.name}")
    start, reference = item.start, item.reference
    train_one(
        start.ref,
        start.revision,
        item.pairs.path,
        item.path,
        item.recipe,
        item.loss,
        item.beta,
        item.overrides,
        services.device,
        item.seed,
        key=item.key,
        log=services.log,
        reference=None if start is reference else (reference.ref, reference.revision),
        slic_sft_weight=item.slic_sft_weight,
        precision=item.precision,
        checkpoint_steps=item.checkpoint_steps,
        lora=item.lora,
        ranks=services.ranks,
        launch=services.launch,
        tracking=services.tracking,
        name=item.name,
        trust_remote_code=trusts_code(item),
    )
    release_memory()


def train_one(
    policy_ref: str,
    revision: str | None,
    pairs_path: Path,
    out_dir: Path,
    recipe: str,
    loss,
    beta: float,
    overrides: dict,
    device: torch.device,
    seed: int,
    key: str = "",
    log=print,
    reference: tuple[str, str | None] | None = None,
    slic_sft_weight: float = 0.1,
    precision: str | None = None,
    callbacks: list | None = None,
    checkpoint_steps: int | None = None,
    lora: dict | None = None,
    ranks: Ranks = Ranks(),
    launch: dict | None = None,
    tracking: Tracking = Tracking(),
    name: str | None = None,
    trust_remote_code: bool = False,
) -> dict:
    """Train one model on one pair file; write it and its train.json (holding `key`) to `out_dir` atomically.

    `loss`: a `train.losses` entry (see resolve_loss). `reference`: (ref, revision) of the reference
    model when it is not the starting policy (iterative rounds start from the previous round but
    keep the original); by default a frozen copy of the starting weights. `callbacks`: extra
    transformers TrainerCallbacks (benchmarks time the steps with one). `checkpoint_steps`: save a
    Trainer checkpoint that often into `.<out_dir name>.checkpoints/` beside `out_dir` (holding
    `key`); a later call with the same key resumes from the last one; removed once the model is saved.
    `lora`: train.lora's settings, or None to train every weight. `ranks`: the processes training
    this model together (each calls this); the main process writes the outputs. `launch`: what
    train.json says about the run's processes (default: one process). `tracking`: the experiment
    trackers to log to, under the run `name` (default: `out_dir`'s name).
    """
    from datasets import Dataset, load_from_disk
    from transformers import AutoModelForCausalLM

    from prefalign.engine.lean_dpo import LeanDPOTrainer
    from prefalign.models.loading import from_pretrained, load_policy_to_train, positions, resolve

    model, tokenizer = load_policy_to_train(policy_ref, revision, trust_remote_code)
    loaded = config_as_loaded(model)
    peft_config = lora_config(lora, model, policy_ref, log) if lora else None
    if reference is None and lora:
        ref_model = None  # TRL scores the reference with the adapters disabled
    elif reference is None:
        # The reference is a frozen copy of the untrained weights, taken in memory rather than read again.
        ref_model = copy.deepcopy(model).eval()
    else:
        reference_ref, reference_revision = reference
        ref_model = from_pretrained(
            AutoModelForCausalLM,
            resolve(reference_ref, "policy"),
            "policy",
            reference_revision,
            trust_remote_code,
            dtype=torch.float32,
        ).eval()
    if ref_model is not None:
        ref_model.requires_grad_(False)

    pairs = read_parquet(pairs_path, columns=["prompt", "chosen", "rejected"])
    resume = None
    if checkpoint_steps:
        scratch = str(checkpoint_path(Path(out_dir)))
        if ranks.main:  # the main process empties stale checkpoints and drops a partial one ...
            resume = last_complete_checkpoint(checkpoint_dir(Path(out_dir), key))
        ranks.wait()  # ... before any process reads the folder
        resume = resume or last_complete_checkpoint(Path(scratch))
    else:
        scratch = tempfile.mkdtemp(prefix="prefalign-trainer-")
    label, loss_types, loss_weights = resolve_loss(loss, slic_sft_weight)
    # The trackers' environment stays set until the training is over (the finally below).
    tracker = contextlib.ExitStack()
    tracker_fields = tracker.enter_context(reporting(tracking, name or Path(out_dir).name, fresh=resume is None))
    tracker.enter_context(fp32_switches_restored())  # the TrainingArguments below set TF32 for the process
    args, settings = dpo_args(
        recipe,
        loss_types,
        beta,
        overrides,
        device,
        seed,
        scratch,
        loss_weights,
        precision,
        checkpoint_steps,
        ranks.count,
        tracker_fields,
        positions(model.config),
    )
    if settings.get("group_by_length"):
        ids = tokenizer(list(pairs["prompt"] + pairs["chosen"]) + list(pairs["prompt"] + pairs["rejected"]))[
            "input_ids"
        ]
        longest = np.maximum(*np.split(np.array([len(i) for i in ids]), 2))
        pairs = pairs.iloc[length_grouped_order(longest, args.per_device_train_batch_size, seed)]
    shared = None
    if ranks.count > 1:
        # The processes share one on-disk dataset: TRL caches the reference log-probs beside it,
        # written by the main process and read by all (a temporary name, so a killed run's is cleared).
        shared = scratch_beside(Path(out_dir), "pairs")
        if ranks.main:
            shutil.rmtree(shared, ignore_errors=True)
            Dataset.from_pandas(pairs, preserve_index=False).save_to_disk(str(shared))
        ranks.wait()
        dataset = load_from_disk(str(shared))
    else:
        dataset = Dataset.from_pandas(pairs, preserve_index=False)
    try:
        t0 = time.time()
        with completion_tokens_only() if settings.get("completion_only_head") else contextlib.nullcontext():
            # Timed from here: with precomputed reference log-probs the constructor runs the reference pass.
            trainer = LeanDPOTrainer(
                model=model,
                ref_model=ref_model,
                args=args,
                train_dataset=dataset,
                processing_class=tokenizer,
                peft_config=peft_config,
            )
            if settings["compile_step"] != "eager" and trainer.lean():
                # One shape for the compiled step: every batch padded to the longest pair.
                trainer.compile_step, trainer.note = settings["compile_step"], log
                trainer.data_collator.pad_to_multiple_of = fixed_pad_length(trainer.train_dataset, args.max_length)
            # One short line per logging step instead of the Trainer's metric dicts.
            trainer.remove_callback(PrinterCallback)
            trainer.add_callback(_LogLine(log))
            clock = _StepClock()
            for callback in [clock, *(callbacks or [])]:
                trainer.add_callback(callback)
            if resume:
                log(f"  resuming from {Path(resume).name} (a checkpoint of an interrupted training)")
            try:
                result = trainer.train(resume_from_checkpoint=resume)
            except TrainingDiverged as e:
                raise TrainingDiverged(
                    f"training {Path(out_dir).name} diverged: {e}; nothing was saved. Lower the learning rate "
                    f"(train.dpo.learning_rate; the {recipe!r} recipe's is {args.learning_rate:g}) or change beta / "
                    f"the loss, then rerun: finished models are kept."
                ) from None
        seconds = time.time() - t0
        info = {
            "key": key,
            "recipe": recipe,
            "loss": label,
            "beta": beta,
            "base_model": policy_ref,
            "reference_model": reference[0] if reference else policy_ref,
            "pairs_file": str(pairs_path),
            "pairs": len(pairs),
            "settings": {k: v for k, v in settings.items() if k != "output_dir"},
            "resumed_from": Path(resume).name if resume else None,
            "train_seconds": round(seconds, 2),
            "pairs_per_second": round(len(pairs) * args.num_train_epochs / seconds, 2),
            # Trainer construction (the reference pre-pass included), the first step (compilation
            # included), and the rate of the steps after it: the one-off costs apart from the rate.
            "setup_seconds": round(clock.begin - t0, 2),
            "first_step_seconds": round((clock.first or clock.end) - clock.begin, 2),
            "steady_pairs_per_second": round(
                args.per_device_train_batch_size
                * ranks.count
                * (clock.last_step - clock.first_step)
                / (clock.end - clock.first),
                2,
            )
            if clock.first and clock.end > clock.first
            else None,
            "step_compiled_as": trainer.compile_step,  # as it ran: eager if not asked for, not possible or failed
            "metrics": result.metrics,
            "world_size": 1,
            **(launch or {}),
            "lora": lora,
            "log_history": trainer.state.log_history,
        }
        trained = trainer.accelerator.unwrap_model(trainer.model)
        sharded = trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled  # weights split over the processes
        if ranks.count > 1 and not sharded:
            digests = ranks.gather(weights_digest(trained))
            info["weights_digests"] = [f"{d:016x}" for d in digests]
            if len(set(digests)) > 1:
                raise RuntimeError(
                    f"the processes training {Path(out_dir).name} together ended with different "
                    f"weights ({info['weights_digests']}); nothing was saved"
                )
        restore_config(trained, loaded)
        if sharded:
            save_gathered(trainer, tokenizer, info, Path(out_dir), ranks)
        elif ranks.main:
            save_trained(trained, tokenizer, info, Path(out_dir), lora is not None)
        if checkpoint_steps and ranks.main:
            shutil.rmtree(scratch, ignore_errors=True)  # the model is saved: its checkpoints are done with
        last = next((h for h in reversed(trainer.state.log_history) if "loss" in h), {})
        log(f"  trained in {seconds:.1f}s, last logged loss {last.get('loss', float('nan')):.4f}")
        return info
    finally:
        tracker.close()
        if not checkpoint_steps:
            shutil.rmtree(scratch, ignore_errors=True)
        if shared is not None:
            ranks.wait()  # every process is done with the shared dataset
            if ranks.main:
                shutil.rmtree(shared, ignore_errors=True)
