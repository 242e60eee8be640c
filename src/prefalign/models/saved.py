"""What a local model directory's own files rule out, read before any model is loaded: the planning
step's check of `policy.model` and `reward.model` (exit 2 before any work, not 1 during it).

Reads the file listing and config.json only; hub ids are checked when loaded (loading.py), with the
same messages, and built-in models too but for the policy's positions, which their specs give.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

from prefalign.models.loading import (
    AUTO_CLASSES,
    MODEL_KINDS,
    OWN_CODE,
    TRAINED_HEADS,
    ModelLoadError,
    ModelPathError,
    check_context,
    local_path,
    no_weights,
    reward_index,
)

# Files of which a saved tokenizer has at least one (fast tokenizers, BPE, WordPiece, SentencePiece).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "tokenizer.model",
    "sentencepiece.bpe.model",
)


def check_saved_model(
    ref: str,
    role: str,
    max_length: int | None = None,
    positive_label: str | None = None,
    single_logit: bool = False,
    trust_remote_code: bool = False,
    key: str | None = None,
) -> None:
    """Before any work, what a local model directory's own files already refuse: no weights, no
    tokenizer saved beside them, a model of another kind than the role needs (_wrong_kind), a policy with fewer
    positions than `max_length` needs (check_context), a classifier without the class
    `positive_label` (reward_index). Raised as ModelPathError (exit 2), naming `key` (default
    `<role>.model`). Reads the listing and
    config.json only; hub models are checked when they are loaded, built-in ones too but for the
    policy's positions (_check_builtin_context)."""
    if ref.startswith("prefalign:"):
        if role == "policy" and max_length is not None:
            _check_builtin_context(ref, max_length)
        return
    path = local_path(ref)
    if path is None or not (path / "config.json").is_file():
        return
    key = key or f"{role}.model"
    missing = no_weights(path)
    if missing:
        raise ModelPathError(f"{key}: {missing}")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelPathError(
            f"{key}: {ref!r} has no tokenizer files (none of {', '.join(TOKENIZER_FILES)}). Save the "
            "tokenizer beside the weights: `tokenizer.save_pretrained(DIR)`."
        )
    try:
        saved = json.loads((path / "config.json").read_text(encoding="utf-8"))
        config = SimpleNamespace(**saved)
    except (ValueError, TypeError) as e:
        raise ModelPathError(f"{key}: {ref!r}: config.json is not a JSON object ({e})") from None
    wrong_kind = _wrong_kind(saved, role, trust_remote_code)
    if wrong_kind:
        raise ModelPathError(f"{key}: {ref!r} {wrong_kind}")
    if not getattr(config, "id2label", None):  # transformers' default: num_labels (2) classes LABEL_i
        config.id2label = {i: f"LABEL_{i}" for i in range(getattr(config, "num_labels", None) or 2)}
    try:
        if role == "policy" and max_length is not None:
            check_context(config, max_length, ref)
        elif role == "reward":
            reward_index(config, positive_label, single_logit, key.removesuffix(".model"))
    except ModelLoadError as e:
        raise ModelPathError(str(e)) from None


def _check_builtin_context(ref: str, max_length: int) -> None:
    """check_context for a built-in policy, before it is built: a trained one's positions are in its spec
    (`lm_positions`), a converted one's in its config.json once converted (before that: checked when loaded)."""
    from prefalign.models.build_cache import built
    from prefalign.models.specs import POLICY_DIR, SPECS, BuildSpec, cache_dir

    spec = SPECS[ref.split(":", 1)[1]]  # a known name: the config's validation checked it
    if isinstance(spec, BuildSpec):
        config = SimpleNamespace(n_positions=spec.lm_positions)
    else:
        target = cache_dir() / "models" / spec.key()
        try:
            config = SimpleNamespace(**json.loads((target / POLICY_DIR / "config.json").read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):  # not converted yet
            return
        if not built(target):
            return
    try:
        check_context(config, max_length, ref)
    except ModelLoadError as e:
        raise ModelPathError(str(e)) from None


def _wrong_kind(saved: dict, role: str, trust_remote_code: bool = False) -> str | None:
    """Why a saved config.json (a dict) is not a model of the kind `role` needs, or None: its
    `model_type` has no class of that kind in transformers (a seq2seq T5 as the policy), or the classes it
    was saved from are all of the other kind (a classifier as the policy, a causal LM as the reward). A
    type of the checkpoint's own code (auto_map) needs `trust_remote_code` and the role's Auto class there."""
    from transformers.models.auto import modeling_auto

    causal_lm, classifier = (
        modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    )

    needed, other = (causal_lm, classifier) if role == "policy" else (classifier, causal_lm)
    kind, instead = MODEL_KINDS[role], TRAINED_HEADS[role][2]
    model_type, classes = saved.get("model_type"), saved.get("architectures") or []
    saved_as = f" ({', '.join(map(str, classes))})" if classes else ""
    if isinstance(model_type, str) and model_type not in needed:
        auto_map = saved.get("auto_map")
        if isinstance(auto_map, dict) and auto_map:  # its classes are code shipped with the checkpoint
            if not trust_remote_code:
                return f"is a {model_type!r} model{saved_as} that {OWN_CODE.format(key=role)}"
            auto_class = AUTO_CLASSES[role]
            if auto_class in auto_map:
                return None
            return (
                f"is a {model_type!r} model{saved_as} whose own code has no {auto_class} (its auto_map: "
                f"{', '.join(auto_map)}); point it at {instead}"
            )
        return (
            f"is a {model_type!r} model{saved_as}, and transformers has no {kind} of that type; point it at {instead}"
        )
    if classes and all(c in set(other.values()) for c in classes):
        return f"was saved as {', '.join(map(str, classes))}, not as a {kind}; point it at {instead}"
    return None
