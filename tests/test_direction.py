"""Training moves the policy towards the reward, for every trainer: the direction, not only that weights change.

The tiny policy writes the synthetic corpus' templated opinions ("The film was very charming ...") and
picks among its 16 sentiment adjectives about evenly. The reward here is a classifier whose positive
logit reads those adjectives alone (word_classifier): + for the good ones, - for the bad ones, 0 for a
text with neither, so neither length nor an empty text earns anything. Each test trains the tiny policy
for a few seconds through prefalign's own code (train_one with the lean DPO trainer, an iterative round,
train_rloo) and scores FRESH samples of the trained policy: trained towards the reward, their mean
reward rises by more than MARGIN; trained on swapped pairs (chosen <-> rejected), or for RLOO towards
the other class, it falls by more than MARGIN. A trainer that swapped chosen and rejected (in its loss
or its data), or a reward read from the wrong class, fails these tests.
"""

from __future__ import annotations

import functools

import pytest
import torch

from prefalign.config.schema import SamplingConfig
from prefalign.engine.pair_rules import pairs_frame
from prefalign.engine.sample_file import sample_and_score
from prefalign.models.loading import bos_prompt, load_policy, load_tokenizer
from prefalign.training.job import DpoJob, RlooJob

# The synthetic corpus' adjectives (models.builtin.synthetic_corpus), one token each after a space.
GOOD = {"great", "wonderful", "brilliant", "moving", "funny", "charming", "superb", "delightful"}
BAD = {"awful", "boring", "dull", "terrible", "clumsy", "tedious", "painful", "bland"}
CPU = torch.device("cpu")
SAMPLING = SamplingConfig(max_length=16, batch_size=250)
# How far a training must move the mean reward of 1,000 fresh samples (their standard error: ~0.04).
MARGIN = 0.15
# The DPO trainings: the tiny run's learning rate, one epoch of 120 pairs in batches of 8.
DPO_SETTINGS = {"learning_rate": 1e-3, "logging_steps": 5}


def word_classifier(tokenizer):
    """A DistilBERT sentiment classifier (NEGATIVE, POSITIVE) built by hand: its positive logit is
    3 * sqrt(2) * m / sqrt(m^2 + 2 / 16), m = (good - bad adjectives) / tokens ([CLS] and [SEP]
    included), and its negative logit the opposite. One layer whose attention is uniform (zero queries and keys) averages each token's
    sign (+1 good, -1 bad, 0 else) into the [CLS] position; the layer norms keep it, as the constant
    dimensions 2 and 3 stop them from blowing a small value up; the head maps it to the two logits."""
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    config = DistilBertConfig(
        vocab_size=len(tokenizer),
        dim=4,
        n_layers=1,
        n_heads=1,
        hidden_dim=4,
        dropout=0.0,
        attention_dropout=0.0,
        seq_classif_dropout=0.0,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
    )
    model = DistilBertForSequenceClassification(config).eval()
    sign = torch.zeros(len(tokenizer))
    for token, index in tokenizer.get_vocab().items():
        word = tokenizer.convert_tokens_to_string([token]).strip().lower()
        sign[index] = float(word in GOOD) - float(word in BAD)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        embeddings = model.distilbert.embeddings
        embeddings.word_embeddings.weight.copy_(
            torch.stack([sign, -sign, torch.ones_like(sign), -torch.ones_like(sign)], 1)
        )
        layer = model.distilbert.transformer.layer[0]
        for norm in (embeddings.LayerNorm, layer.sa_layer_norm, layer.output_layer_norm):
            norm.weight.fill_(1.0)
        layer.attention.v_lin.weight[:2, :2] = torch.eye(2)  # values: the sign (dimension 0) and its opposite
        layer.attention.out_lin.weight[:2, :2] = 4 * torch.eye(2)
        model.pre_classifier.weight[:2, 0] = torch.tensor([1.0, -1.0])  # its positive and negative parts
        model.classifier.weight[:, :2] = 3 * torch.tensor([[-1.0, 1.0], [1.0, -1.0]])
    return model


@pytest.fixture(scope="module")
def reward(tiny_dir):
    """(classifier, its tokenizer): word_classifier over the tiny classifier's tokenizer ([CLS] ... [SEP])."""
    tokenizer = load_tokenizer(str(tiny_dir / "reward"), None, "reward")
    return word_classifier(tokenizer), tokenizer


@pytest.fixture(scope="module")
def mean_reward(reward, tmp_path_factory):
    """policy directory -> mean reward of 1,000 fresh samples of it (one seed for every policy, none
    used for training), sampled and scored as the sample stage does."""
    classifier, tokenizer = reward
    out = tmp_path_factory.mktemp("fresh")

    @functools.cache
    def of(policy_dir) -> float:
        policy, policy_tokenizer = load_policy(str(policy_dir), None, CPU)
        return float(
            sample_and_score(
                policy, policy_tokenizer, classifier, tokenizer, 1, 1000, SAMPLING, 1234, None, out / "samples.parquet"
            ).reward.mean()
        )

    return of


def pair_files(policy_dir, reward, out, seed: int) -> dict:
    """{"as ranked": pairs of 400 samples of the policy by the `margin` rule, "swapped": the same with
    chosen and rejected exchanged}: parquet files as the pairs stage writes them."""
    classifier, tokenizer = reward
    policy, policy_tokenizer = load_policy(str(policy_dir), None, CPU)
    samples = sample_and_score(
        policy, policy_tokenizer, classifier, tokenizer, 1, 400, SAMPLING, seed, None, out / "samples.parquet"
    )
    pairs = pairs_frame(samples, bos_prompt(policy_tokenizer), strategy="margin", count=120, margin=1.0, seed=seed)
    assert (pairs.chosen_reward > pairs.rejected_reward).all()
    files = {"as ranked": out / "pairs.parquet", "swapped": out / "swapped.parquet"}
    pairs.to_parquet(files["as ranked"])
    pairs.rename(columns={"chosen": "rejected", "rejected": "chosen"}).to_parquet(files["swapped"])
    return files


@pytest.fixture(scope="module")
def trained(tiny_dir, reward, tmp_path_factory):
    """(loss, orientation) -> directory of the tiny policy trained with train_one on the original's pairs
    (each trained once per module, whichever test asks first)."""
    from prefalign.stages.train_dpo import train_one

    root = tmp_path_factory.mktemp("dpo")
    files = pair_files(tiny_dir / "policy", reward, root, seed=0)

    @functools.cache
    def model(loss: str, orientation: str):
        out = root / f"{loss}-{orientation.replace(' ', '-')}"
        job = DpoJob(files[orientation], str(tiny_dir / "policy"), out, "default", loss, 0.1, DPO_SETTINGS, CPU, 0)
        train_one(job, log=lambda m: None)
        return out

    return model


@pytest.mark.parametrize("orientation, sign", [("as ranked", 1), ("swapped", -1)])
@pytest.mark.parametrize("loss", ["sigmoid", "hinge"])
def test_dpo_moves_the_policy_towards_the_chosen_texts(tiny_dir, trained, mean_reward, loss, orientation, sign):
    """The lean DPO trainer (sigmoid: DPO, hinge: SLiC) raises the reward when the chosen texts are the
    better ones and lowers it when they are the worse ones."""
    before, after = mean_reward(tiny_dir / "policy"), mean_reward(trained(loss, orientation))
    assert sign * (after - before) > MARGIN, (before, after)


@pytest.mark.parametrize("orientation, sign", [("as ranked", 1), ("swapped", -1)])
def test_an_iterative_round_moves_its_start_towards_the_chosen_texts_of_its_own_samples(
    tiny_dir, trained, reward, mean_reward, tmp_path, orientation, sign
):
    """Round 2: DPO from round 1's model on pairs of round 1's own samples, the original as the
    reference (train_one's `reference`, as train_dpo passes it for an IterativeRound)."""
    from prefalign.stages.train_dpo import train_one

    round_1 = trained("sigmoid", "as ranked")
    files = pair_files(round_1, reward, tmp_path, seed=2)
    job = DpoJob(
        files[orientation],
        str(round_1),
        tmp_path / "round-2",
        "default",
        "sigmoid",
        0.1,
        DPO_SETTINGS,
        CPU,
        0,
        reference_ref=str(tiny_dir / "policy"),
    )
    train_one(job, log=lambda m: None)
    before, after = mean_reward(round_1), mean_reward(tmp_path / "round-2")
    assert sign * (after - before) > MARGIN, (before, after)


@pytest.mark.parametrize("label, sign", [("POSITIVE", 1), ("NEGATIVE", -1)])
def test_rloo_moves_the_policy_towards_the_class_it_is_rewarded_for(
    tiny_dir, reward, mean_reward, tmp_path, label, sign
):
    """train_rloo with the POSITIVE logit as its reward raises the (POSITIVE) reward of fresh samples;
    with the NEGATIVE logit (here exactly its opposite) it lowers it."""
    from prefalign.stages.train_rloo import train_rloo

    classifier, tokenizer = reward
    job = RlooJob(
        str(tiny_dir / "policy"),
        tmp_path / "rloo",
        kl_coef=0.05,
        steps=10,
        overrides={"learning_rate": 1e-3, "logging_steps": 5},
        device=CPU,
        seed=0,
        sampling=SAMPLING,
        positive_label=label,
    )
    train_rloo(job, classifier, tokenizer, log=lambda m: None)
    before, after = mean_reward(tiny_dir / "policy"), mean_reward(tmp_path / "rloo")
    assert sign * (after - before) > MARGIN, (before, after)
