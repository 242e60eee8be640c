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
generation by default, so the clip never binds). The policy is written like a DPO model (see
train_dpo.py): the safetensors weights, the tokenizer, its model card (README.md) and `train.json`,
into a temporary directory renamed when complete. The `train` stage runs it for each
`online.kl_coefs` value (`prefalign train CONFIG --set online.kl_coefs=[0.05]`); alone, on the demo
models, 200 steps (~2 min on 2 cores):

    HF_HUB_OFFLINE=1 python -c "import torch; from pathlib import Path; \
    from prefalign.models.loading import load_classifier; from prefalign.training.job import RlooJob; \
    from prefalign.stages.train_rloo import train_rloo; \
    classifier, tokenizer = load_classifier('prefalign:demo', None, torch.device('cpu')); \
    train_rloo(RlooJob('prefalign:demo', Path('rloo-demo'), kl_coef=0.05, steps=200), classifier, tokenizer)"
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from transformers import PrinterCallback, TrainerCallback

from prefalign.engine.scoring import score_texts
from prefalign.engine.trl_compat import completion_tokens_only, lean_trainer_usable, rloo_reference_is, unchecked_note
from prefalign.models.loading import ModelLoadError, reward_index
from prefalign.pipeline.items import RlooModel
from prefalign.pipeline.services import Services, release_memory
from prefalign.stages.trajectory import trajectory_callbacks
from prefalign.training.job import RlooJob
from prefalign.training.model_card import model_card
from prefalign.training.trackers import reporting
from prefalign.training.trained_model import config_as_loaded, restore_config, save_trained

REWARD_NAME = "classifier"  # TRL logs the reward as `rewards/<__name__>/mean`
# Fields train_rloo sets from its job (kl_coef, steps, its scratch directory); `overrides` may not touch them.
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


class TermsReward:
    """TRL reward function for a composed reward (reward.terms): the scorer's weighted sum of each
    completion's terms (engine/reward_terms.py), the completion scored as ClassifierReward scores it."""

    def __init__(self, scorer, eos: int):
        self.scorer, self.eos = scorer, eos
        self.__name__ = REWARD_NAME

    def __call__(self, prompts, completions, completion_ids, **kwargs) -> list[float]:
        # TRL's completion ids run up to and including EOS: the length is the tokens before it.
        n_tokens = np.array([sum(1 for t in ids if t != self.eos) for ids in completion_ids])
        return self.scorer(list(completions), list(completions), n_tokens)["reward"].tolist()


class _RewardLine(TrainerCallback):
    """One short line per logging step (reward, KL, loss, length; progress.LogLine prints DPO's pair metrics)."""

    def __init__(self, log):
        self.log = log

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            get = lambda k: float(logs.get(k, float("nan")))  # noqa: E731
            self.log(
                f"  step {state.global_step}/{state.max_steps}: reward {get(f'rewards/{REWARD_NAME}/mean'):.3f}, "
                f"kl {get('kl'):.4f}, loss {get('loss'):.4f}, length {get('completions/mean_length'):.1f}"
            )


def rloo_settings(job: RlooJob, output_dir: str, tracker: dict | None = None) -> dict:
    """The `RLOOConfig` fields of `job`'s training: RLOO_DEFAULTS, the sampler's settings, the
    device's, `job.overrides`, then the fields the job owns (OWNED). `tracker`: the experiment-tracker
    fields from trackers.reporting (default: report to none). Refuses (ValueError) overrides of an
    owned field or of one RLOOConfig does not have."""
    from trl import RLOOConfig

    overrides = job.overrides
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
    if job.sampling is not None:
        # Train on the distribution prefalign samples and evaluates: same filters, same length.
        sampling = job.sampling
        settings.update(
            max_completion_length=sampling.max_length - 1,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            temperature=sampling.temperature,
        )
    if job.device.type == "cpu":
        settings["use_cpu"] = True
    if job.device.type != "cuda":
        # TRL turns bf16 autocast on by default; off CUDA it is slower and changes the numbers.
        settings["bf16"] = False
    settings.update(seed=job.seed, data_seed=job.seed, save_strategy="no", **(tracker or {"report_to": "none"}))
    settings.update(overrides)
    settings.update(output_dir=output_dir, beta=job.kl_coef, max_steps=job.steps)
    return settings


def train_rloo_model(item: RlooModel, services: Services) -> None:
    """Train an `RlooModel` item into its directory."""
    services.log(f"train {item.name}: RLOO, {item.steps} steps")
    classifier = services.classifier()
    job = RlooJob.from_item(item, services, classifier.positive_label)
    callbacks = trajectory_callbacks(item, services)  # evaluate.during_training: stages/trajectory.py
    scorer = services.reward_scorer() if item.reward.terms else None
    train_rloo(job, classifier.model, classifier.tokenizer, log=services.log, callbacks=callbacks, scorer=scorer)
    release_memory()


def train_rloo(job: RlooJob, classifier, classifier_tokenizer, log=print, callbacks=(), scorer=None) -> dict:
    """Train the policy from its original weights with RLOO for `job.steps` steps; write it, its card
    and its train.json to `job.out_dir` atomically, and return what train.json holds. `callbacks`:
    extra transformers TrainerCallbacks; `scorer`: a composed reward (engine/reward_terms.TermScorer)
    used instead of the classifier's logit.

    `classifier` / `classifier_tokenizer` is the reward model (on `job.device`). For example:

        classifier, tokenizer = load_classifier(REWARD_DIR, None, torch.device("cpu"))
        train_rloo(RlooJob(POLICY_DIR, Path("out"), kl_coef=0.05, steps=200), classifier, tokenizer)
    """
    from trl import RLOOConfig

    scratch = tempfile.mkdtemp(prefix="prefalign-rloo-")
    tracker = contextlib.ExitStack()  # the trackers' environment, set until the training is over
    try:
        fields = tracker.enter_context(reporting(job.tracking, job.run_name))
        settings = rloo_settings(job, scratch, fields)
        args = RLOOConfig(**settings)
        model, tokenizer, loaded = _load_policy(job, args.max_completion_length)
        if scorer is not None:
            reward = TermsReward(scorer, tokenizer.eos_token_id)
        else:
            reward = ClassifierReward(
                classifier, classifier_tokenizer, job.positive_label, single_logit=job.single_logit
            )
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)  # the original weights, frozen
        dataset = _prompts(tokenizer, job.steps, args)
        t0 = time.time()
        trainer = _make_trainer(model, ref_model, reward, args, dataset, tokenizer, log)
        for callback in callbacks:
            trainer.add_callback(callback)
        # Log-probs of completion tokens only, not of the padding after EOS (see trl_compat): same numbers,
        # less time (one 15-step probe on the demo policy: 7.9 s -> 6.2 s, identical rewards).
        with completion_tokens_only():
            result = trainer.train()
        seconds = time.time() - t0
        info = _rloo_info(job, trainer, result, settings, seconds)
        restore_config(trainer.model, loaded)
        save_trained(trainer.model, tokenizer, info, Path(job.out_dir), lora=False, card=model_card(job, info))
        shown = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
        log(f"  trained in {seconds:.1f}s, mean reward {shown(info['first_reward'])} -> {shown(info['final_reward'])}")
        return info
    finally:
        tracker.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _load_policy(job: RlooJob, completion_tokens: int):
    """(the policy to train, its tokenizer, its config as loaded); a ModelLoadError when the policy
    has fewer positions than BOS + `completion_tokens`."""
    from prefalign.models.loading import load_policy_to_train, positions

    model, tokenizer = load_policy_to_train(job.policy_ref, job.policy_revision, job.trust_remote_code)
    loaded = config_as_loaded(model)
    limit = positions(model.config)
    if limit is not None and 1 + completion_tokens > limit:
        raise ModelLoadError(
            f"policy {job.policy_ref!r} has {limit} positions, fewer than BOS + {completion_tokens} "
            "completion tokens: lower sampling.max_length"
        )
    return model, tokenizer, loaded


def _prompts(tokenizer, steps: int, args):
    """The prompt column: one BOS token (an empty prompt crashes generation), once per prompt group
    the run will draw; the trainer repeats each row num_generations times."""
    from datasets import Dataset

    from prefalign.models.loading import bos_prompt

    n_prompts = max(1, steps * args.generation_batch_size // args.num_generations)
    return Dataset.from_dict({"prompt": [bos_prompt(tokenizer)] * n_prompts})


def _make_trainer(model, ref_model, reward, args, dataset, tokenizer, log):
    """RLOOTrainer on `model` against `ref_model`, logging one line per logging step."""
    from trl import RLOOTrainer

    if not lean_trainer_usable():
        log(unchecked_note("RLOOTrainer loads its reference by name and scores every position"))
    with rloo_reference_is(ref_model):
        trainer = RLOOTrainer(
            model=model, reward_funcs=reward, args=args, train_dataset=dataset, processing_class=tokenizer
        )
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(_RewardLine(log))
    return trainer


def _rloo_info(job: RlooJob, trainer, result, settings: dict, seconds: float) -> dict:
    """What train.json says about the training."""
    history = trainer.state.log_history
    rewards = [h[f"rewards/{REWARD_NAME}/mean"] for h in history if f"rewards/{REWARD_NAME}/mean" in h]
    kls = [h["kl"] for h in history if "kl" in h]
    return {
        "key": job.key,
        "method": "rloo",
        "kl_coef": job.kl_coef,
        "steps": job.steps,
        "base_model": job.policy_ref,
        "positive_label": job.positive_label,
        "settings": {k: v for k, v in settings.items() if k != "output_dir"},
        "train_seconds": round(seconds, 2),
        "seconds_per_step": round(seconds / max(job.steps, 1), 3),
        "first_reward": rewards[0] if rewards else None,
        "final_reward": rewards[-1] if rewards else None,
        "final_kl": kls[-1] if kls else None,
        "metrics": result.metrics,
        "world_size": 1,
        **job.launch,
        "log_history": history,
    }
