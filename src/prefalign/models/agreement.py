"""How closely two classifiers of one task agree on texts neither trained on: a judge's record in its
info.json (`BuildSpec.compare_with`). A judge that agrees with the reward model on every held-out text
exposes nothing; one that agrees on most fluent texts but not on what a policy learnt to exploit does."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

from prefalign.models.specs import REWARD_DIR, SPECS, BuildSpec


@torch.inference_mode()
def classify(model, tokenizer, max_length: int, texts: list[str], batch: int = 128) -> tuple[list[bool], list[float]]:
    """(whether each text's most likely class is POSITIVE, as accuracy counts it; its POSITIVE logit), in order."""
    model.eval()
    positive = int(model.config.label2id["POSITIVE"])
    said: list[bool] = []
    logits: list[float] = []
    for i in range(0, len(texts), batch):
        enc = tokenizer(texts[i : i + batch], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        out = model(**enc).logits  # [batch, classes]
        said += (out.argmax(-1) == positive).tolist()
        logits += out[:, positive].tolist()
    return said, logits


def pearson(xs: list[float], ys: list[float]) -> float:
    """Pearson correlation of two equally long lists (NaN when either is constant)."""
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    cov = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
    var_x = sum((x - mean_x) ** 2 for x in xs)
    var_y = sum((y - mean_y) ** 2 for y in ys)
    return cov / math.sqrt(var_x * var_y) if var_x > 0 and var_y > 0 else float("nan")


def agreement(judge, reference, texts: list[str], labels: list[int], reference_name: str) -> dict:
    """Agreement of two (model, tokenizer, max_length) classifiers on labelled held-out texts: each one's
    accuracy, the share of texts both label alike, and the Pearson correlation of their positive logits."""
    (judge_said, judge_logits), (reference_said, reference_logits) = (
        classify(*judge, texts),
        classify(*reference, texts),
    )
    truth = [label == 1 for label in labels]
    n = max(len(texts), 1)
    return {
        "reference": reference_name,
        "held_out_texts": len(texts),
        "same_label_share": sum(a == b for a, b in zip(judge_said, reference_said)) / n,
        "positive_logit_pearson": pearson(judge_logits, reference_logits),
        "judge_accuracy": sum(a == t for a, t in zip(judge_said, truth)) / n,
        "reference_accuracy": sum(a == t for a, t in zip(reference_said, truth)) / n,
    }


def compared(
    spec: BuildSpec, classifier_and_tokenizer, held_out: tuple[list, list], build: Callable[[BuildSpec], Path], log
) -> dict:
    """{"agreement": ...} of a just-trained classifier with that of the build spec.compare_with (`build`
    returns its directory, building it if missing) on the held-out (texts, labels), when that build holds
    out the same texts; else nothing."""
    if spec.compare_with is None:
        return {}
    reference = SPECS[spec.compare_with]
    if not isinstance(reference, BuildSpec) or reference.split() != spec.split():
        log(f"not compared with prefalign:{spec.compare_with}: it holds out other texts")
        return {}
    model, tokenizer = classifier_and_tokenizer
    judge = (model, tokenizer, tokenizer.model_max_length)
    found = agreement(judge, saved_classifier(build(reference) / REWARD_DIR), *held_out, reference.name)
    log(
        f"agreement with prefalign:{reference.name}'s classifier: same label on {found['same_label_share']:.3f} "
        f"of the held-out texts, positive logits' Pearson r {found['positive_logit_pearson']:.3f}"
    )
    return {"agreement": found}


def saved_classifier(directory: Path) -> tuple:
    """(model, tokenizer, max_length) of a classifier a build saved."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForSequenceClassification.from_pretrained(directory)
    return model, tokenizer, tokenizer.model_max_length
