"""What the stages share within one run: the log, the device, and models loaded once.

A `Services` is made by the runner for one run (one per process when several run it) and handed to every stage function. It loads the
reward classifier, the original policy (the KL reference) and policy tokenizers on first use and
keeps them, so a grid of 30 models reads each of them once. `release_memory` returns freed heap to
the OS between models.
"""

from __future__ import annotations

import ctypes
import gc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from prefalign.errors import PrefalignError
from prefalign.pipeline.distributed import Ranks
from prefalign.pipeline.items import Original, RewardModel
from prefalign.pipeline.logs import log
from prefalign.training.trackers import Tracking


class NormalizeStatsMissing(PrefalignError, RuntimeError):
    """reward.normalize was asked for before the original's samples (its term stats) were written."""


def release_memory() -> None:
    """Hand freed heap back to the OS between models.

    Each training and evaluation allocates tensors of new shapes; glibc keeps the freed blocks, so
    without this the process's resident memory ratchets up model after model of a long grid.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        pass


@dataclass
class Classifier:
    """The reward model, ready to score: model, tokenizer and the index of the positive class."""

    model: Any
    tokenizer: Any
    positive_index: int
    positive_label: str


@dataclass
class Services:
    """The device, the log and lazily loaded shared models of one run."""

    device: torch.device
    reward: RewardModel
    original: Original
    reward_batch_size: int | None = None  # texts per classifier batch (None: the engine's default)
    log: Any = log
    ranks: Ranks = field(default_factory=Ranks)  # this process among the run's processes
    # What a trained model's train.json says about the processes of the run that trained it.
    launch: dict = field(default_factory=dict)
    tracking: Tracking = field(default_factory=Tracking)  # where the trainers report (train.report_to)
    _loaded: dict = field(default_factory=dict, repr=False)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype models are loaded in for inference (sampling, scoring, evaluation)."""
        from prefalign.models.device import inference_dtype

        return inference_dtype(self.device)

    def classifier(self) -> Classifier:
        """The reward model (with reward.terms: the first classifier term), loaded once."""
        r = self.reward
        key = ("classifier", r.ref, r.revision, r.positive_label, r.single_logit)
        return self._classifier(key, r.ref, r.revision, r.positive_label, r.single_logit, r.trust_remote_code)

    def reward_scorer(self):
        """The run's reward as sample_and_score's scorer (engine/reward_terms.py), its models loaded once:
        the classifier's scores, or with reward.terms every term and their weighted sum (standardised
        with the original's term stats under reward.normalize)."""
        from prefalign.engine.reward_terms import ClassifierScorer, LoadedTerm, TermScorer

        r = self.reward
        if not r.terms:
            c = self.classifier()
            return ClassifierScorer(c.model, c.tokenizer, c.positive_index, self.reward_batch_size)
        loaded = []
        for i, t in enumerate(r.terms):
            if t.type == "classifier":
                key = ("classifier", t.ref, t.revision, t.positive_label, t.single_logit)
                section = f"reward.terms[{i}]"
                c = self._classifier(
                    key, t.ref, t.revision, t.positive_label, t.single_logit, t.trust_remote_code, section
                )
                loaded.append(
                    LoadedTerm(t, ClassifierScorer(c.model, c.tokenizer, c.positive_index, self.reward_batch_size))
                )
            elif t.type == "fluency":
                loaded.append(
                    LoadedTerm(t, self._policy(("policy", t.ref, t.revision), t.ref, t.revision, t.trust_remote_code))
                )
            else:
                loaded.append(LoadedTerm(t))
        # The original's own samples are scored before their stats exist: their sum is filled in afterwards.
        stats = self._stored_stats() if r.normalize else None
        return TermScorer(loaded, stats, r.normalize)

    def _stored_stats(self) -> dict | None:
        """The term stats samples.meta.json holds for the original's samples of these terms, or None."""
        from prefalign.pipeline.store import read_json

        meta = read_json(self.reward.stats_path) if self.reward.stats_path else None
        return (
            meta["term_stats"]
            if meta and meta.get("texts_key") == self.reward.stats_key and "term_stats" in meta
            else None
        )

    def normalize_stats(self) -> dict | None:
        """What standardises each term under reward.normalize (None without it): the terms' mean and std over
        the original's samples, from samples.meta.json; NormalizeStatsMissing before those exist."""
        if not self.reward.normalize:
            return None
        stats = self._stored_stats()
        if stats is None:
            raise NormalizeStatsMissing(
                "reward.normalize standardises each term on the original's samples (samples.parquet), which are "
                "missing or were scored with other terms: run `prefalign sample` first"
            )
        return stats

    def judge(self, judge) -> Classifier:
        """An `evaluate.judges` classifier (a pipeline.evidence_items.Judge), loaded once."""
        j = judge
        key = ("judge", j.ref, j.revision, j.positive_label, j.single_logit)
        return self._classifier(
            key, j.ref, j.revision, j.positive_label, j.single_logit, j.trust_remote_code, j.section
        )

    def _classifier(self, key, ref, revision, positive_label, single_logit, trust_remote_code, section="reward"):
        if key not in self._loaded:
            from prefalign.models.loading import load_classifier, reward_index

            model, tokenizer = load_classifier(ref, revision, self.device, self.dtype, trust_remote_code)
            index = reward_index(model.config, positive_label, single_logit, section)
            self._loaded[key] = Classifier(model, tokenizer, index, positive_label)
        return self._loaded[key]

    def reference_policy(self):
        """The original policy in eval mode: what KL is measured against."""
        o = self.original
        return self._policy(("policy", o.ref, o.revision), o.ref, o.revision, o.trust_remote_code)[0]

    def fluency_model(self, scorer):
        """(the `evaluate.fluency` causal LM in eval mode, its tokenizer), loaded once."""
        s = scorer
        return self._policy(("policy", s.ref, s.revision), s.ref, s.revision, s.trust_remote_code)

    def _policy(self, key, ref, revision, trust_remote_code):
        if key not in self._loaded:
            from prefalign.models.loading import load_policy

            self._loaded[key] = load_policy(ref, revision, self.device, self.dtype, trust_remote_code=trust_remote_code)
        return self._loaded[key]

    def policy_tokenizer(self, ref: str, revision: str | None):
        key = ("tokenizer", ref, revision)
        if key not in self._loaded:
            from prefalign.models.loading import load_tokenizer

            self._loaded[key] = load_tokenizer(ref, revision, "policy", self.original.trust_remote_code)
        return self._loaded[key]


def model_info(cfg) -> dict:
    """What models.json and the report say about the run's models: references, resolved paths, and
    for prefalign's built-in models their measured quality."""
    from prefalign.models.loading import resolve
    from prefalign.pipeline.store import read_json

    info: dict = {
        "policy": {"ref": cfg.policy.model, "revision": cfg.policy.revision},
        "reward_model": {
            "ref": cfg.reward.model,
            "revision": cfg.reward.revision,
            "positive_label": cfg.reward.positive_label,
        },
    }
    for role, section in (("policy", "policy"), ("reward", "reward_model")):
        ref = getattr(cfg, role).model
        path = resolve(ref, role)
        info[section]["path"] = str(Path(path).resolve()) if Path(path).is_dir() else path
        built = read_json(Path(path).parent / "info.json") if ref.startswith("prefalign:") else None
        if built:
            info[section].update(built[section])
    return info
