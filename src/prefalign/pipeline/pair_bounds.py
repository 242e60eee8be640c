"""What the planner can know about the pairs a config asks for before the pairs stage runs: the prompt
groups the samples will have (when the prompts can be cut now), and whether samples already on disk
can give the pairs at all (the pairs stage's own rule function, run on them). plan.py turns each
finding into a PlanError (exit 2, before any work)."""

from __future__ import annotations

import collections

from prefalign.engine.pair_rules import PairError, build_pairs
from prefalign.pipeline.items import Original, Pairs, Samples
from prefalign.pipeline.store import is_done, read_parquet


def policy_tokenizer_on_disk(original: Original):
    """The policy's tokenizer when this machine has it (a local directory, a built-in model already built,
    a hub model in the local cache), else None: planning never builds or downloads a model."""
    from prefalign.models.loading import load_tokenizer, local_path

    ref = original.ref
    try:
        if ref.startswith("prefalign:"):
            from prefalign.models.build_cache import built
            from prefalign.models.specs import SPECS, cache_dir

            if not built(cache_dir() / "models" / SPECS[ref.split(":", 1)[1]].key()):
                return None
        elif local_path(ref) is None:
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(
                ref, revision=original.revision, local_files_only=True, trust_remote_code=original.trust_remote_code
            )
        return load_tokenizer(ref, original.revision, "policy", original.trust_remote_code)
    except Exception:  # not here, or not loadable: the sample stage loads it and says why
        return None


def prompt_group_sizes(samples: Samples, original: Original) -> list[int] | None:
    """The sizes of the prompt groups `samples` will have, one per distinct prompt text (a corpus cycled,
    or texts that start alike, give one prompt more than once, and pairs group by the prompt's text), when
    the prompts can be cut now: a local or the built-in corpus, and the policy's tokenizer on this machine
    (policy_tokenizer_on_disk). None otherwise, or without prompts. Raises the corpus's CorpusError."""
    from prefalign.data.files import local_path

    prompts = samples.sampling.prompts
    if prompts is None or (prompts.corpus != "rotten_tomatoes" and local_path(prompts.corpus) is None):
        return None  # a hub dataset is not loaded while planning
    tokenizer = policy_tokenizer_on_disk(original)
    if tokenizer is None:
        return None
    from prefalign.engine.prompts import corpus_prompts

    rows = corpus_prompts(prompts, tokenizer, samples.count, samples.seed)
    return list(collections.Counter(text for _, text in rows).values())


def pairs_on_disk_problem(pairs: Pairs) -> str | None:
    """Why the samples already on disk for `pairs` (current: their key matches) cannot give its pairs, in
    the words of the pairs stage's rule function run on their rewards (and prompts), or None: they can,
    the pairs are on disk already, or the samples are not (nothing to check before sampling)."""
    samples = pairs.samples
    if is_done(pairs.meta, pairs.key) and pairs.path.exists():
        return None
    if not (is_done(samples.meta, samples.key) and samples.path.exists()):
        return None
    grouped = samples.sampling.prompts is not None  # as pairs_frame: pairs stay within a prompt
    df = read_parquet(samples.path, columns=["reward", "prompt"] if grouped else ["reward"])
    groups = df["prompt"].to_numpy() if grouped else None
    try:
        build_pairs(df["reward"].to_numpy(), pairs.strategy, pairs.count, seed=pairs.seed, groups=groups, **pairs.rule)
    except PairError as e:
        return str(e)
    return None
