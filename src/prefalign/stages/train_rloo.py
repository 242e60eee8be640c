"""The `train` stage for `RlooModel` items: online RL with the reward classifier, via TRL 1.16's `RLOOTrainer`.

Algorithm (REINFORCE leave-one-out, Ahmadian et al. 2024, as TRL implements it). Every step the
policy samples `num_generations` completions from the BOS token for each of `generation_batch_size
/ num_generations` prompts (all prompts are that one BOS token), with prefalign's sampler settings
(top-k, top-p, temperature, `sampling.max_length - 1` new tokens, stop at EOS). Each completion gets

    r = positive logit of the classifier(completion) - kl_coef * sum_t [log pi(y_t) - log pi_ref(y_t)]

where pi_ref is a frozen copy of the original weights (TRL's `beta` is `kl_coef`; the KL term is
TRL's first-order, sequence-level estimate, subtracted from the reward rather than added to the
loss). The advantage of a completion is r minus the mean r of the other completions of its group,
and the loss is PPO's clipped surrogate on the sequence log-probability ratio (one update per
generation by default, so the clip never binds). The policy is written like `train_one`'s: the
safetensors weights, the tokenizer and `train.json`, into a temporary directory renamed when
complete. The `train` stage runs it for each `online.kl_coefs` value
(`prefalign train CONFIG --set online.kl_coefs=[0.05]`); alone, on the demo models, 200 steps
(~2 min on 2 cores):

    HF_HUB_OFFLINE=1 python -c "import torch; from prefalign.models.loading import load_classifier; \
    from prefalign.stages.train_rloo import train_rloo; cpu = torch.device('cpu'); \
    classifier, tokenizer = load_classifier('prefalign:demo', None, cpu); \
    train_rloo('prefalign:demo', None, classifier, tokenizer, 'POSITIVE', 'rloo-demo', kl_coef=0.05, steps=200, \
    overrides={}, device=cpu, seed=0)"
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

import torch
from transformers import PrinterCallback, TrainerCallback

from prefalign.engine.scoring import score_texts
from prefalign.engine.trl_compat import completion_tokens_only, rloo_reference_is
from prefalign.models.loading import ModelLoadError, reward_index
from prefalign.pipeline.items import RlooModel
from prefalign.pipeline.services import Services, release_memory
from prefalign.training.trackers import Tracking, reporting

REWARD_NAME = "classifier"  # TRL logs the reward as `rewards/<__name__>/mean`
# Fields train_rloo sets from its own arguments; `overrides` may not touch them.
OWNED = ("beta", "max_steps", "output_dir")

RLOO_DEFAULTS: dict = dict(
    # TRL's 1e-6 is for billion-parameter LLMs. Demo policy, kl_coef 0.05, 80 steps: 1e-5 moved the mean
    # reward 0.27 -> 0.47; 1e-4 0.50 -> 1.47 with per-token KL < 0.02 and texts as fluent as before but
    # upbeat; 5e-4 reached 2.2 by collapsing to 7-token completions (per-token KL ~1).
    learning_rate=1e-4,
    # 4 completions per prompt: the smallest group whose leave-one-out baseline is not one sibling's noise.
    num_generations=4,
    # One generation per optimizer step: 16 completions = 4 prompt groups. generation_batch_size defaults
    # to per_device_train_batch_size * processes * gradient_accumulation_steps and must be divisible by
    # num_generations (checked by RLOOConfig).
    per_device_train_batch_size=16,
    # prefalign's sampler defaults (sampling.max_length 64 = BOS + 63 tokens); replaced by `sampling`.
    max_completion_length=63,
    top_k=50,
    top_p=0.85,
    temperature=1.0,
    # TRL turns (activation) checkpointing on by default; these policies are small and recomputation only costs time.
    activation_checkpointing=False,
    # Dropout would make the old, new and reference log-probs of one completion disagree by noise, which
    # the KL estimate and the importance ratio then read as drift.
    disable_dropout=True,
    logging_steps=10,
    disable_tqdm=True,
)


class ClassifierReward:
    """TRL reward function: the classifier's logit of the class named `label`, for each completion.

    Passing the classifier itself as `reward_funcs` would be wrong in TRL 1.16: its model path scores
    `prompt + completion` tokenized with `add_special_tokens=False` (no [CLS]/[SEP], and the BOS prompt
    string read as text) and returns `logits[:, 0]`, which for a two-class sentiment model is usually
    the NEGATIVE logit. Here the class is looked up by name in `config.id2label` and texts go through
    `score_texts`, exactly as the `sample` and `evaluate` stages score them.
    """

    def __init__(
        self, classifier, tokenizer, label: str = "POSITIVE", batch_size: int = 128, single_logit: bool = False
    ):
        self.classifier, self.tokenizer, self.batch_size = classifier, tokenizer, batch_size
        self.label = label
        self.positive_index = reward_index(classifier.config, label, single_logit)
        self.__name__ = REWARD_NAME  # TRL names the logged metric after it

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        # The prompt is the BOS token only; the sampler's texts are the decoded tokens after BOS (special
        # tokens skipped, as TRL decodes completions), so the completion alone is the text to score.
        # score_texts runs under torch.inference_mode with padding and special tokens.
        return score_texts(list(completions), self.classifier, self.tokenizer, self.positive_index, self.batch_size)[
            "reward"
        ].tolist()


class _RewardLine(TrainerCallback):
    """One short line per logging step (training's `_LogLine` prints DPO's pair metrics, absent here)."""

    def __init__(self, log):
        self.log = log

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            get = lambda k: float(logs.get(k, float("nan")))  # noqa: E731
            self.log(
                f"  step {state.global_step}/{state.max_steps}: reward {get(f'rewards/{REWARD_NAME}/mean'):.3f}, "
                f"kl {get('kl'):.4f}, loss {get('loss'):.4f}, length {get('completions/mean_length'):.1f}"
            )


def rloo_args(
    kl_coef: float,
    steps: int,
    overrides: dict,
    device: torch.device,
    seed: int,
    output_dir: str,
    sampling=None,
    tracker: dict | None = None,
):
    """The `RLOOConfig` and the plain dict of settings it was built from (for train.json).
    `tracker`: the experiment-tracker fields from trackers.reporting (default: report to none)."""
    from trl import RLOOConfig

    owned = sorted(set(overrides) & set(OWNED))
    if owned:
        raise ValueError(
            f"RLOO overrides may not set {', '.join(owned)}: train_rloo sets them from kl_coef, "
            "steps and its scratch directory"
        )
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(RLOOConfig)})
    if unknown:
        raise ValueError(f"not RLOOConfig fields: {', '.join(unknown)}")
    settings = dict(RLOO_DEFAULTS)
    if sampling is not None:
        # Train on the distribution prefalign samples and evaluates: same filters, same length.
        settings.update(
            max_completion_length=sampling.max_length - 1,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            temperature=sampling.temperature,
        )
    if device.type == "cpu":
        settings["use_cpu"] = True
    if device.type != "cuda":
        # TRL turns bf16 autocast on by default; off CUDA it is slower and changes the numbers.
        settings["bf16"] = False
    settings.update(seed=seed, data_seed=seed, save_strategy="no", **(tracker or {"report_to": "none"}))
    settings.update(overrides)
    settings.update(output_dir=output_dir, beta=kl_coef, max_steps=steps)
    return RLOOConfig(**settings), settings


def train_rloo_model(item: RlooModel, services: Services) -> None:
    """Train an `RlooModel` item into its directory."""
    services.log(f"train {item.name}: RLOO, {item.steps} steps")
    classifier = services.classifier()
    train_rloo(
        item.start.ref,
        item.start.revision,
        classifier.model,
        classifier.tokenizer,
        classifier.positive_label,
        item.path,
        kl_coef=item.kl_coef,
        steps=item.steps,
        overrides=item.overrides,
        device=services.device,
        seed=item.seed,
        key=item.key,
        log=services.log,
        sampling=item.sampling,
        single_logit=item.reward.single_logit,
        launch=services.launch,
        tracking=services.tracking,
        name=item.name,
        trust_remote_code=item.start.trust_remote_code,
    )
    release_memory()


def train_rloo(
    policy_ref: str,
    revision: str | None,
    classifier,
    classifier_tokenizer,
    positive_label: str,
    out_dir: Path,
    *,
    kl_coef: float,
    steps: int,
    overrides: dict,
    device: torch.device,
    seed: int,
    key: str = "",
    log=print,
    sampling=None,
    single_logit: bool = False,
    launch: dict | None = None,
    tracking: Tracking = Tracking(),
    name: str | None = None,
    trust_remote_code: bool = False,
) -> dict:
    """Train the policy from its original weights with RLOO for `steps` steps; write it to `out_dir` atomically.

    `classifier` / `classifier_tokenizer` is the reward model (on `device`), `positive_label` the name
    of its positive class, `sampling` prefalign's sampling settings (max_length, top_k, top_p,
    temperature) or None for RLOO_DEFAULTS. `overrides` are RLOOConfig fields applied last.
    `launch`: what train.json says about the run's processes (default: one). `tracking`: the
    experiment trackers to log to, under the run `name` (default: `out_dir`'s name). For example:

        classifier, tokenizer = load_classifier(REWARD_DIR, None, torch.device("cpu"))
        train_rloo(POLICY_DIR, None, classifier, tokenizer, "POSITIVE", Path("out"), kl_coef=0.05, steps=200,
                   overrides={}, device=torch.device("cpu"), seed=0)
    """
    from datasets import Dataset
    from trl import RLOOTrainer

    from prefalign.models.loading import bos_prompt, load_policy_to_train, positions
    from prefalign.training.trained_model import config_as_loaded, restore_config, save_trained

    scratch = tempfile.mkdtemp(prefix="prefalign-rloo-")
    tracker = contextlib.ExitStack()  # the trackers' environment, set until the training is over
    try:
        tracker_fields = tracker.enter_context(reporting(tracking, name or Path(out_dir).name))
        args, settings = rloo_args(kl_coef, steps, overrides, device, seed, scratch, sampling, tracker_fields)
        reward = ClassifierReward(classifier, classifier_tokenizer, positive_label, single_logit=single_logit)
        model, tokenizer = load_policy_to_train(policy_ref, revision, trust_remote_code)
        loaded = config_as_loaded(model)
        limit = positions(model.config)
        if limit is not None and 1 + args.max_completion_length > limit:
            raise ModelLoadError(
                f"policy {policy_ref!r} has {limit} positions, fewer than BOS + {args.max_completion_length} "
                "completion tokens: lower sampling.max_length"
            )
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        # The prompt column is one BOS token (an empty prompt crashes generation), once per prompt group
        # the run will draw; the trainer repeats each row num_generations times.
        n_prompts = max(1, steps * args.generation_batch_size // args.num_generations)
        dataset = Dataset.from_dict({"prompt": [bos_prompt(tokenizer)] * n_prompts})
        t0 = time.time()
        with rloo_reference_is(ref_model):
            trainer = RLOOTrainer(
                model=model, reward_funcs=reward, args=args, train_dataset=dataset, processing_class=tokenizer
            )
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(_RewardLine(log))
        # Log-probs of completion tokens only, not of the padding after EOS (see trl_compat): same numbers,
        # less time (one 15-step probe on the demo policy: 7.9 s -> 6.2 s, identical rewards).
        with completion_tokens_only():
            result = trainer.train()
        seconds = time.time() - t0
        history = trainer.state.log_history
        rewards = [h[f"rewards/{REWARD_NAME}/mean"] for h in history if f"rewards/{REWARD_NAME}/mean" in h]
        kls = [h["kl"] for h in history if "kl" in h]
        info = {
            "key": key,
            "method": "rloo",
            "kl_coef": kl_coef,
            "steps": steps,
            "base_model": policy_ref,
            "positive_label": positive_label,
            "settings": {k: v for k, v in settings.items() if k != "output_dir"},
            "train_seconds": round(seconds, 2),
            "seconds_per_step": round(seconds / max(steps, 1), 3),
            "first_reward": rewards[0] if rewards else None,
            "final_reward": rewards[-1] if rewards else None,
            "final_kl": kls[-1] if kls else None,
            "metrics": result.metrics,
            "world_size": 1,
            **(launch or {}),
            "log_history": history,
        }
        restore_config(trainer.model, loaded)
        save_trained(trainer.model, tokenizer, info, Path(out_dir), lora=False)
        shown = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
        log(f"  trained in {seconds:.1f}s, mean reward {shown(info['first_reward'])} -> {shown(info['final_reward'])}")
        return info
    finally:
        tracker.close()
        shutil.rmtree(scratch, ignore_errors=True)
