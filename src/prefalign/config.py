"""The experiment config: one YAML file, validated into typed sections before anything runs.

Every field has a default and help text (`prefalign config-help` prints them). A config is read
from a path or from a preset shipped in `prefalign/presets/NAME.yaml`; `--set a.b=value` overrides
apply on top (values are parsed as YAML, so `--set train.betas=[0.1,1]` works). Any unknown key,
wrong type or impossible value raises `ConfigError`, which the CLI turns into exit code 2 with the
offending key named.
"""

from __future__ import annotations

import difflib
import importlib.resources
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

# Every loss TRL 1.16's DPOTrainer implements (branches of `DPOTrainer._compute_loss`).
TRL_LOSSES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
    "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)  # fmt: skip
PAIR_STRATEGIES = ("random", "margin", "threshold")
# Training switches that are prefalign's own, accepted in `train.dpo` next to DPOConfig's fields.
OWN_SETTINGS = {
    "group_by_length": "batch pairs of similar token length (a random order of length-sorted megabatches)",
    "completion_only_head": "project only completion tokens through the LM head on every device (TRL does so on "
    "CUDA only); same results, less work",
}


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-4` as a float (YAML 1.1 insists on `1.0e-4`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _yaml(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


class ConfigError(Exception):
    """A config that cannot run. The CLI prints it and exits with code 2."""


class Section(BaseModel):
    # Unknown keys are errors, not silently ignored: a misspelled `betas` must not run the defaults.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PolicyConfig(Section):
    model: str = Field(
        "lvwerra/gpt2-imdb",
        description="Causal LM to align: a Hugging Face hub id, a local directory saved with "
        "`save_pretrained`, or a model prefalign builds itself (`prefalign:tiny`).",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) of `model`.")


class RewardConfig(Section):
    model: str = Field(
        "lvwerra/distilbert-imdb",
        description="Sequence classifier whose positive-class logit is the reward: hub id, local "
        "directory or `prefalign:tiny`.",
    )
    revision: str | None = Field(None, description="Hub revision of `model`.")
    positive_label: str = Field(
        "POSITIVE",
        description="Name of the positive class in the classifier's `config.id2label`. Looked up by "
        "name, never by index, because label order differs between checkpoints.",
    )
    batch_size: int | None = Field(
        None, gt=0, description="Texts per classifier batch. Empty: sized from available memory."
    )


class SamplingConfig(Section):
    num_samples: int = Field(10_000, gt=1, description="Texts drawn from the policy for pair building.")
    max_length: int = Field(
        64, ge=2, description="Maximum sequence length in tokens, including the BOS prompt token."
    )
    top_k: int = Field(50, ge=0, description="Top-k filtering (0 disables it).")
    top_p: float = Field(0.85, gt=0, le=1, description="Nucleus (top-p) filtering.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    batch_size: int | None = Field(
        None, gt=0, description="Sequences generated per batch. Empty: sized from available memory."
    )
    seed: int = Field(0, ge=0, description="Seed of the sample stage; the same seed gives the same texts.")
    engine: Literal["fast", "hf"] = Field(
        "fast",
        description="`fast`: prefalign's KV-cache decode loop (finished sequences leave the batch, top-k "
        "before top-p); `hf`: transformers' `generate`. Same sampling distribution; use `hf` for "
        "architectures whose cache the fast loop cannot shrink.",
    )


class PairsConfig(Section):
    strategies: list[Literal["random", "margin", "threshold"]] = Field(
        default_factory=lambda: ["random"],
        min_length=1,
        description="Pair rules to build, one pair file (and one set of models) each. `random`: two "
        "distinct samples, higher reward chosen; `margin`: random pairs with a reward gap above "
        "`margin`; `threshold`: one sample below `threshold` (rejected) and one at or above it (chosen).",
    )
    count: int = Field(20_000, gt=0, description="Distinct pairs to build per strategy.")
    margin: float = Field(1.0, ge=0, description="`margin` strategy: minimum reward gap (exclusive).")
    threshold: float = Field(0.5, description="`threshold` strategy: the reward that splits rejected from chosen.")
    seed: int = Field(0, ge=0, description="Seed of the pair draw.")

    @field_validator("strategies")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("strategies must not repeat")
        return v


class TrainConfig(Section):
    recipe: Literal["default", "seed"] = Field(
        "default",
        description="`seed`: the original experiment's settings (RMSprop, lr 5e-3, 50 warmup steps, "
        "3 epochs, batch 8, max_length 256, fp32). `default`: TRL's defaults plus precomputed "
        "reference log-probs, tuned for this task (see training.py).",
    )
    losses: list[str] = Field(
        default_factory=lambda: ["sigmoid", "hinge"],
        min_length=1,
        description="DPOTrainer `loss_type` values to train, one model each (sigmoid = DPO, hinge = "
        f"SLiC as TRL implements it, ipo, ...). Any of: {', '.join(TRL_LOSSES)}.",
    )
    betas: list[float] = Field(
        default_factory=lambda: [0.1, 1.0], min_length=1, description="DPO beta values, one model each."
    )
    dpo: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra `trl.DPOConfig` fields, applied on top of the recipe (e.g. "
        "`{learning_rate: 1e-5, num_train_epochs: 1}`). Names are checked against DPOConfig. Also accepts "
        + "; ".join(f"`{k}` ({v})" for k, v in OWN_SETTINGS.items())
        + ".",
    )
    seed: int = Field(0, ge=0, description="Training seed (data order, dropout).")

    @field_validator("losses")
    @classmethod
    def _known_losses(cls, v: list[str]) -> list[str]:
        for loss in v:
            if loss not in TRL_LOSSES:
                raise ValueError(f"unknown loss {loss!r}; TRL 1.16 supports {', '.join(TRL_LOSSES)}")
        if len(set(v)) != len(v):
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
        if not v:
            return v
        import dataclasses

        from trl import DPOConfig

        names = {f.name for f in dataclasses.fields(DPOConfig)}
        hints = typing.get_type_hints(DPOConfig)
        # These are set per model by prefalign itself; letting YAML change them would desync the grid.
        owned = {"beta", "loss_type", "output_dir"}
        checked = {}
        for key, value in v.items():
            if key in OWN_SETTINGS:
                if not isinstance(value, bool):
                    raise ValueError(f"`{key}` must be true or false, not {value!r}")
                checked[key] = value
                continue
            if key in owned:
                raise ValueError(f"`{key}` is set by prefalign (use train.betas / train.losses)")
            if key not in names:
                hint = difflib.get_close_matches(key, names | set(OWN_SETTINGS), n=1)
                raise ValueError(f"`{key}` is not a DPOConfig field" + (f" (did you mean `{hint[0]}`?)" if hint else ""))
            # Type-check against DPOConfig's own annotation now, not after sampling has run for an hour.
            try:
                adapter = TypeAdapter(hints[key])
            except Exception:  # an annotation pydantic cannot express: leave it to DPOConfig
                checked[key] = value
                continue
            try:
                checked[key] = adapter.validate_python(value)
            except ValidationError as e:
                raise ValueError(f"`{key}`: {value!r} is not a valid {hints[key]} ({e.errors()[0]['msg']})") from None
        return checked


class EvaluateConfig(Section):
    runs: int = Field(10, gt=0, description="Independent evaluation runs per model, each with its own seed.")
    samples: int = Field(5_000, gt=0, description="Texts sampled per run (same sampler settings as `sampling`).")
    seed: int = Field(1_000, ge=0, description="Run k uses seed `seed + k`; every model sees the same seeds.")


class Config(Section):
    name: str = Field("experiment", min_length=1, description="Experiment name; default run dir is runs/<name>/.")
    run_dir: str | None = Field(None, description="Where every stage writes. Empty: runs/<name>/ under the cwd.")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto", description="Torch device; `auto` picks CUDA, then MPS, then CPU."
    )
    policy: PolicyConfig = Field(default_factory=PolicyConfig, description="The policy to align.")
    reward: RewardConfig = Field(default_factory=RewardConfig, description="The reward classifier.")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="Sample stage.")
    pairs: PairsConfig = Field(default_factory=PairsConfig, description="Pairs stage.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Train stage.")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig, description="Evaluate stage.")

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.name


# --------------------------------------------------------------------------------------------
# Loading


def preset_names() -> list[str]:
    files = importlib.resources.files("prefalign") / "presets"
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".yaml"))


def _read_yaml(source: str) -> tuple[dict[str, Any], str]:
    """Return the raw mapping and a default name for a path or a preset name."""
    path = Path(source)
    if path.is_file():
        text, default_name = path.read_text(encoding="utf-8"), path.stem
    elif source in preset_names():
        text = (importlib.resources.files("prefalign") / "presets" / f"{source}.yaml").read_text("utf-8")
        default_name = source
    else:
        raise ConfigError(f"no config file or preset named {source!r} (presets: {', '.join(preset_names())})")
    try:
        raw = _yaml(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(raw).__name__}")
    return raw, default_name


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one `--set a.b.c=value` to the raw mapping (value parsed as YAML)."""
    key, sep, value = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment!r}: expected key.path=value")
    parts = key.strip().split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: `{'.'.join(parts[: i + 1])}` is not a section")
        node = child
    try:
        node[parts[-1]] = _yaml(value) if value.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: value is not valid YAML: {e}") from None


def _format_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            parent = _model_at(e["loc"][:-1])
            hint = difflib.get_close_matches(str(e["loc"][-1]), list(parent.model_fields), n=1) if parent else []
            msg = "unknown key" + (f" (did you mean `{'.'.join(map(str, e['loc'][:-1] + (hint[0],)))}`?)" if hint else "")
        else:
            msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"  `{loc}`: {msg}")
    return "invalid config:\n" + "\n".join(lines)


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


def load_config(source: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read, override and validate a config. Raises ConfigError naming the bad key."""
    raw, default_name = _read_yaml(source)
    raw.setdefault("name", default_name)
    for assignment in overrides:
        apply_override(raw, assignment)
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_error(e)) from None


def describe(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every field, recursively: the config reference."""
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            rows.extend(describe(field.annotation, key + "."))
            continue
        default = field.get_default(call_default_factory=True)
        rows.append((key, yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip(), field.description or ""))
    return rows
