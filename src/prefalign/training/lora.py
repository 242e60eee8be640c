"""LoRA adapters (`train.lora`): which of a model's modules get them, as peft's LoraConfig.

Without `target_modules`, peft's default modules for the architecture, or, for an architecture peft
has none for (Phi-3, Mamba, Jamba), its linear layers but the output head. Some layers peft refuses
to adapt on some architectures (a Mamba's `out_proj` and `conv1d`): they are left out of the
default and of `all-linear`, and naming one is a ModelLoadError, as is naming a module the model does
not have. GPT-2's linear layers are `Conv1D`s, whose weight is stored transposed.
"""

from __future__ import annotations

import torch

from prefalign.errors import ModelLoadError


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


def _is_linear(module) -> bool:
    return isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"  # GPT-2's Conv1D


def linear_layers(model) -> tuple[list[str], list[str]]:
    """(the names (last part) of the model's linear layers but its output head, those of them peft
    agrees to adapt on this architecture)."""
    head = model.get_output_embeddings()
    names = sorted(
        {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if module is not head and _is_linear(module)}
    )
    return names, [name for name in names if not peft_refuses(model, name)]


def module_classes(model) -> dict[str, set[str]]:
    """Module name (its last part) -> the classes of the model's modules so named."""
    modules: dict[str, set[str]] = {}
    for name, module in model.named_modules():
        modules.setdefault(name.rsplit(".", 1)[-1], set()).add(type(module).__name__)
    return modules


def default_targets(targets, model, log=print):
    """`train.lora.target_modules`, with the model's adaptable linear layers in place of peft's
    default where peft has none for the architecture, and of `all-linear` where peft refuses some."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

    model_type = getattr(model.config, "model_type", None)
    linear, accepted = linear_layers(model)
    if (targets is None and model_type not in PEFT_DEFAULTS) or (targets == "all-linear" and accepted != linear):
        why = "peft has no default target modules for" if targets is None else "peft refuses some linear layers of"
        targets = accepted
        log(
            f"  LoRA: {why} {model_type!r} models; adapting its linear layers {targets} (train.lora.target_modules "
            "chooses others)"
        )
    return targets


def check_targets(wanted: list[str] | None, model, modules: dict[str, set[str]], policy_ref: str) -> None:
    """Raise ModelLoadError for a named target module the model does not have or peft refuses."""
    missing = [t for t in wanted or [] if t not in modules and t != "all-linear"]
    if missing:
        raise ModelLoadError(
            f"train.lora.target_modules: {missing} are not module names of {policy_ref} (it has "
            f"{sorted(n for n in modules if n)[:30]}); name some of its linear layers or use all-linear"
        )
    refused = [t for t in wanted or [] if t != "all-linear" and peft_refuses(model, t)]
    if refused:
        model_type = getattr(model.config, "model_type", None)
        accepted = linear_layers(model)[1]
        raise ModelLoadError(
            f"train.lora.target_modules: peft cannot adapt {refused} on {model_type!r} models; name "
            f"others of its linear layers ({', '.join(accepted)}) or use all-linear"
        )


def lora_config(lora: dict, model, policy_ref: str, log=print):
    """peft's LoraConfig for train.lora's settings, checked against the model's module names. Without
    `target_modules`, peft's default for the architecture, or its linear layers where peft has none;
    `all-linear` leaves out the layers peft refuses on the architecture."""
    from peft import LoraConfig

    targets = default_targets(lora["target_modules"], model, log)
    wanted = [targets] if isinstance(targets, str) else targets  # None: peft's default for the architecture
    modules = module_classes(model)
    check_targets(wanted, model, modules, policy_ref)
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
