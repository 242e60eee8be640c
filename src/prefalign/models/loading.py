"""Loading the policy and the reward classifier, wherever they live.

A model reference is one of:
- `prefalign:NAME`: a model prefalign builds and caches itself (`prefalign.models.specs.SPECS`);
  `NAME` selects the spec and the policy or reward half is picked by the caller;
- a local directory written by `save_pretrained`;
- a Hugging Face hub id (with an optional revision). Offline, loading fails at once with a message
  saying which model could not be reached and how to point the config at a local copy.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from pathlib import Path

import torch

from prefalign.errors import ModelLoadError, ModelPathError
from prefalign.models.speedups import fuse_activations, pad_output_vocabulary


def local_path(ref: str) -> Path | None:
    """`ref` as a local path when it is one: it looks like a path (corpus.looks_like_path: it starts
    with `/`, `./`, `../` or `~`, or has more slashes than `owner/name`) or exists on disk. Anything
    else (`owner/name`, `gpt2`) is a hub id. A path is never sent to the hub."""
    from prefalign.data.files import looks_like_path

    if looks_like_path(ref) or ref in (".", "..") or Path(ref).exists():
        return Path(ref).expanduser()
    return None


def _checked_local(ref: str, role: str, key: str | None = None) -> str:
    path = local_path(ref)
    if path is None:
        return ref
    if not path.is_dir() or not (path / "config.json").is_file():
        what = (
            "a local directory with no config.json, so no saved model"
            if path.is_dir()
            else "is a file, not a model directory"
            if path.exists()
            else "no such directory"
        )
        key = key or ("policy.model" if role == "policy" else "reward.model")
        raise ModelPathError(
            f"{key}: {ref!r}: {what} (a local path; a hub id looks like `owner/name`). Point "
            f"`{key}` at a directory holding config.json and the weights (save_pretrained's output)."
        )
    return str(path)


def resolve(ref: str, role: str) -> str:
    """Turn a reference into something `from_pretrained` accepts; builds `prefalign:` models."""
    if ref.startswith("prefalign:"):
        from prefalign.models.builtin import build
        from prefalign.models.specs import POLICY_DIR, REWARD_DIR, SPECS, builtin_checked

        try:
            builtin_checked(ref, role)  # configs are checked when loaded; refs from elsewhere here
        except ModelLoadError:  # a package to install (exit 2), said as it is
            raise
        except ValueError as e:
            raise ModelLoadError(str(e)) from None
        root = build(SPECS[ref.split(":", 1)[1]])
        return str(root / (POLICY_DIR if role == "policy" else REWARD_DIR))
    return _checked_local(ref, role)


def identity(ref: str, revision: str | None = None, role: str = "policy", key: str | None = None) -> str:
    """A string that changes when the model behind `ref` changes (a stage cache key); a local path
    that holds no model is refused, naming the config `key` (default: the role's `.model`).

    Hub ids are identified by id + revision; local directories by their files' names, sizes and
    modification times, so retraining a local model invalidates every stage built on it.
    """
    if ref.startswith("prefalign:"):
        from prefalign.models.specs import SPECS

        spec = SPECS.get(ref.split(":", 1)[1])
        return f"{ref}@{spec.key() if spec else '?'}"
    path = Path(_checked_local(ref, role, key))
    if path.is_dir():
        stats = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in path.iterdir() if p.is_file())
        return f"dir:{path.resolve()}:{hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:12]}"
    return f"hub:{ref}@{revision or 'main'}"


@functools.cache
def _go_offline_if_hub_unreachable() -> None:
    """Switch huggingface_hub to offline mode when the hub cannot be reached.

    Without this, every file request retries for about a minute before failing. Offline mode
    still loads models already in the local HF cache, and fails at once for the others.
    """
    import huggingface_hub.constants as hub

    from prefalign.models.hub import hub_reachable

    if not hub.HF_HUB_OFFLINE and not hub_reachable():
        hub.HF_HUB_OFFLINE = True
        os.environ["HF_HUB_OFFLINE"] = "1"


# Files of which a saved model has at least one (one file, or the index of a sharded checkpoint).
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


# What to do about a local model directory that cannot be loaded, when a run trained it.
RETRAIN = ". If it is a model of a prefalign run, delete its directory and rerun: the run trains it again"


def no_weights(path: Path) -> str | None:
    """Why a local model directory cannot give weights (none of WEIGHT_FILES, and no PEFT adapter, which
    transformers loads on top of its base model), or None."""
    if any((path / name).is_file() for name in (*WEIGHT_FILES, "adapter_config.json")):
        return None
    return f"{path} holds no weights ({' / '.join(WEIGHT_FILES[::2])}){RETRAIN}"


def from_pretrained(loader, ref: str, role: str, revision: str | None, trust_remote_code: bool = False, **kwargs):
    """`loader.from_pretrained(ref)` that fails fast offline and explains what to do in a ModelLoadError.
    `trust_remote_code` (the role's config key) is always passed, so transformers never asks on a terminal."""
    is_local = Path(ref).is_dir()
    if not is_local:
        _go_offline_if_hub_unreachable()
    elif "Tokenizer" not in loader.__name__:  # a model: its weights must be there
        missing = no_weights(Path(ref))
        if missing:
            raise ModelLoadError(f"{role} model: {missing}")
    try:
        loaded = loader.from_pretrained(
            ref, revision=None if is_local else revision, trust_remote_code=trust_remote_code, **kwargs
        )
        if isinstance(loaded, tuple):  # (model, loading info): output_loading_info=True
            return (fuse_activations(loaded[0]), *loaded[1:])
        return fuse_activations(loaded) if isinstance(loaded, torch.nn.Module) else loaded
    except (OSError, ValueError) as e:
        if str(e).startswith("Unrecognized configuration class"):  # transformers lists every class it has
            model_type = re.search(r"\.configuration_(\w+)\.", str(e))
            e = ValueError(
                f"a {model_type[1]!r} model is not a {MODEL_KINDS[role]}" if model_type else str(e).split("\n")[0]
            )
        if "trust_remote_code" in str(e):  # a checkpoint with its own modelling code
            raise ModelLoadError(f"{role} model {ref!r} {OWN_CODE.format(key=role)}") from None
        if is_local:
            raise ModelLoadError(
                f"{role} model: cannot load local directory {ref}: {str(e).rstrip('.')}{RETRAIN}"
            ) from None
        import huggingface_hub.constants as hub

        why = (
            "the hub is unreachable from this machine (or HF_HUB_OFFLINE is set) and the model is not in the "
            "local Hugging Face cache"
            if hub.HF_HUB_OFFLINE
            else "the id is wrong, private, or the download failed"
        )
        raise ModelLoadError(
            f"{role} model {ref!r} could not be loaded from the Hugging Face hub: {why}.\n"
            f"  Download it on a machine with network (`hf download {ref} --local-dir DIR`) and set "
            f"`{'policy' if role == 'policy' else 'reward'}.model: DIR` in the config (or `--set "
            f"{'policy' if role == 'policy' else 'reward'}.model=DIR`), or use the offline demo models.\n"
            f"  Cause: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    except Exception as e:  # a damaged weights file: safetensors' own error type (not an OSError)
        if type(e).__name__ != "SafetensorError" or not is_local:
            raise
        raise ModelLoadError(
            f"{role} model: the weights in {ref} cannot be read ({e}): the file is damaged or incomplete{RETRAIN}"
        ) from None


def load_tokenizer(ref: str, revision: str | None = None, role: str = "policy", trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = from_pretrained(AutoTokenizer, resolve(ref, role), role, revision, trust_remote_code)
    if role == "policy":
        if tok.eos_token_id is None:
            raise ModelLoadError(
                f"policy.model {ref!r}: its tokenizer has no EOS token, so a sampled text could not "
                "end, and DPO training appends one to every text. Save the tokenizer with one "
                "(`tokenizer.eos_token = ...`, then `save_pretrained`)."
            )
        if tok.bos_token_id is None:
            # Unconditional sampling needs a start token; GPT-2-style tokenizers use EOS for it.
            tok.bos_token = tok.eos_token
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
    return tok


def bos_prompt(tokenizer) -> str:
    """The prompt column: the BOS token, or "" when the tokenizer already prepends BOS itself.

    With an empty prompt TRL 1.16 never scores the first completion token (log-probs are shifted by
    one), so every completion needs a one-token prompt, and that token is what sampling starts from.
    """
    ids = tokenizer("")["input_ids"]
    return "" if ids and ids[0] == tokenizer.bos_token_id else tokenizer.bos_token


def load_policy(
    ref: str,
    revision: str | None,
    device: torch.device,
    dtype: torch.dtype | None = None,
    max_length: int | None = None,
    trust_remote_code: bool = False,
):
    """The causal LM in eval mode on `device`, for inference (sampling, log-probs), and its tokenizer
    (BOS and pad always set). On a GPU its LM head is padded (pad_output_vocabulary)."""
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(ref, revision, "policy", trust_remote_code)
    model = _load_trained(AutoModelForCausalLM, ref, "policy", revision, dtype, trust_remote_code)
    check_vocabulary(model, tok, ref, "policy")
    if max_length is not None:
        check_context(model.config, max_length, ref)
    if device.type == "cuda":
        pad_output_vocabulary(model)
    return model.to(device).eval(), tok


def load_policy_to_train(ref: str, revision: str | None, trust_remote_code: bool = False):
    """(the causal LM in fp32 on the CPU, as training starts from it, its tokenizer): weights stay fp32
    whatever the device (bf16 autocast is the training precision's choice); checked like load_policy's."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(ref, revision, "policy", trust_remote_code)
    model = from_pretrained(
        AutoModelForCausalLM, resolve(ref, "policy"), "policy", revision, trust_remote_code, dtype=torch.float32
    )
    check_vocabulary(model, tokenizer, ref, "policy")
    return model, tokenizer


def check_vocabulary(model, tokenizer, ref: str, role: str) -> None:
    """Fail early when the tokenizer gives ids the model has no embedding for (a tokenizer saved from
    another model): sampling could still run, and training or scoring would fail with an IndexError.
    Added tokens beyond the embedding that the pipeline never feeds (not pad, EOS or BOS) are allowed."""
    try:
        rows = model.get_input_embeddings().num_embeddings
    except (AttributeError, NotImplementedError):  # a model that does not expose its embedding: nothing to check
        return
    special = [i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id) if i is not None]
    largest = max([tokenizer.vocab_size - 1, *special])
    if largest >= rows:
        raise ModelLoadError(
            f"{role} model {ref!r}: its tokenizer gives token ids up to {largest}, but the model embeds "
            f"only {rows} tokens: the tokenizer belongs to another model. Save the model's own "
            "tokenizer beside its weights"
        )


def positions(cfg) -> int | None:
    """How many positions a model's config gives it (GPT-2's `n_positions`, others'
    `max_position_embeddings`), or None where it names no limit (rotary-only or state-space models)."""
    return getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)


def check_context(cfg, max_length: int, ref: str) -> None:
    """Fail early when sampled texts (plus the EOS TRL appends in training) do not fit the policy (its config)."""
    limit = positions(cfg)
    if limit is not None and limit <= max_length:
        raise ModelLoadError(
            f"policy {ref!r} has {limit} positions, but sampling.max_length is {max_length} and DPO training "
            f"appends an EOS token: lower sampling.max_length to at most {limit - 1}"
        )


def load_classifier(
    ref: str,
    revision: str | None,
    device: torch.device,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
):
    from transformers import AutoModelForSequenceClassification

    tok = load_tokenizer(ref, revision, "reward", trust_remote_code)
    model = _load_trained(AutoModelForSequenceClassification, ref, "reward", revision, dtype, trust_remote_code)
    if tok.pad_token_id is None:  # e.g. a GPT-2-based classifier: padding is masked, any id will do
        tok.pad_token = tok.eos_token or tok.unk_token or tok.sep_token or tok.convert_ids_to_tokens(0)
    check_vocabulary(model, tok, ref, "reward")
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id
    return model.to(device).eval(), tok


# A checkpoint whose classes are code shipped with it, loaded without `{key}.trust_remote_code`.
OWN_CODE = (
    "runs modelling code of its own (its config's auto_map: transformers' trust_remote_code), which prefalign "
    "does not run unless told to: set `{key}.trust_remote_code: true` if you have read that code and trust it, "
    "or use a model of an architecture transformers has built in"
)

# What each role's model is, and its Auto class.
AUTO_CLASSES = {"policy": "AutoModelForCausalLM", "reward": "AutoModelForSequenceClassification"}
MODEL_KINDS = {
    "policy": f"causal LM ({AUTO_CLASSES['policy']})",
    "reward": f"sequence classifier ({AUTO_CLASSES['reward']})",
}
# Per role: what its checkpoint must be, what a missing head would make transformers do, what to use.
TRAINED_HEADS = {
    "policy": (
        "a trained causal LM",
        "generate with a randomly initialised LM head (e.g. a base model saved without its head)",
        "a checkpoint saved from a ...ForCausalLM / ...LMHeadModel",
    ),
    "reward": (
        "a trained sequence classifier",
        "score texts with a randomly initialised head (e.g. a base or causal LM checkpoint)",
        "a fine-tuned classifier such as lvwerra/distilbert-imdb",
    ),
}


def _load_trained(
    loader, ref: str, role: str, revision: str | None, dtype: torch.dtype | None, trust_remote_code: bool = False
):
    """`loader.from_pretrained` of the role's model; refused (ModelLoadError) when its checkpoint lacks
    the task head's weights, which transformers would otherwise initialise at random."""
    model, loading = from_pretrained(
        loader,
        resolve(ref, role),
        role,
        revision,
        trust_remote_code,
        dtype=dtype or torch.float32,
        output_loading_info=True,
    )
    untrained_head = untrained_head_weights(model, loading["missing_keys"])
    if untrained_head:
        what, consequence, instead = TRAINED_HEADS[role]
        key = f"{role}.model"
        raise ModelLoadError(
            f"{key} {ref!r} is not {what}: its checkpoint has no weights for {', '.join(untrained_head[:3])}"
            f"{', ...' if len(untrained_head) > 3 else ''}, so transformers would {consequence}. Point {key} at "
            f"{instead}."
        )
    return model


def untrained_head_weights(model, missing_keys) -> list[str]:
    """The weights a loaded model's checkpoint lacked outside its base model (the task head), sorted."""
    base = f"{model.base_model_prefix}." if getattr(model, "base_model_prefix", "") else None
    return sorted(k for k in missing_keys if base is None or not k.startswith(base))


def reward_index(config, positive_label: str, single_logit: bool = False, section: str = "reward") -> int:
    """Which output of the classifier is the reward: the class named `positive_label`, or the only
    output of a one-output classifier when `reward.single_logit` says that is intended. `section`:
    the config section the messages name (`reward`, or a judge's `evaluate.judges[i]`)."""
    outputs = getattr(config, "num_labels", None) or len(getattr(config, "id2label", {}) or {})
    if outputs == 1:
        if not single_logit:
            raise ModelLoadError(
                f"{section}.model has a single output: it has no positive class to look up, and a positive rate "
                "needs two classes (with one, softmax calls every text positive). If its one logit is the reward "
                f"you want, set `{section}.single_logit: true` (positive then means logit > 0); otherwise use a "
                "classifier with a positive and a negative class."
            )
        return 0
    if single_logit:
        raise ModelLoadError(
            f"{section}.single_logit is set but {section}.model has {outputs} outputs; unset it and name "
            f"the positive class in {section}.positive_label"
        )
    return positive_class_index(config.id2label, positive_label, section)


def positive_class_index(id2label: dict, name: str, section: str = "reward") -> int:
    """Index of the class called `name` in `config.id2label` (exact match, else a unique case-insensitive one)."""
    labels = {int(k): str(v) for k, v in id2label.items()}
    exact = [i for i, v in labels.items() if v == name]
    if len(exact) == 1:
        return exact[0]
    folded = [i for i, v in labels.items() if v.lower() == name.lower()]
    if len(folded) == 1:
        return folded[0]
    shown = ", ".join(f"{i}: {v!r}" for i, v in sorted(labels.items()))
    raise ModelLoadError(
        f"{section}.positive_label {name!r} is not a label of the classifier (its id2label is {{{shown}}}); "
        f"set {section}.positive_label to one of those names"
    )
