import time

import pytest
import torch

from prefalign.models.loading import ModelLoadError, load_policy, positive_class_index


def test_positive_label_found_by_name_not_index():
    assert positive_class_index({0: "NEGATIVE", 1: "POSITIVE"}, "POSITIVE") == 1
    assert positive_class_index({"0": "POSITIVE", "1": "NEGATIVE"}, "POSITIVE") == 0


def test_positive_label_case_insensitive_fallback():
    assert positive_class_index({0: "negative", 1: "positive"}, "POSITIVE") == 1


def test_absent_label_lists_the_labels():
    with pytest.raises(ModelLoadError, match=r"'LABEL_0'.*'LABEL_1'"):
        positive_class_index({0: "LABEL_0", 1: "LABEL_1"}, "POSITIVE")


def test_hub_model_offline_fails_fast_with_advice(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(ModelLoadError) as err:
        load_policy("lvwerra/gpt2-imdb", None, torch.device("cpu"))
    assert time.time() - t0 < 30
    msg = str(err.value)
    assert "lvwerra/gpt2-imdb" in msg and "policy.model" in msg and "local" in msg.lower()


def test_missing_local_dir_is_not_mistaken_for_hub(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="local directory"):
        load_policy(str(tmp_path / "empty"), None, torch.device("cpu"))


def test_policy_tokenizer_gets_bos_and_pad(tiny_policy):
    model, tok = tiny_policy
    assert tok.bos_token == "<|endoftext|>" and tok.pad_token_id is not None
    assert not model.training


def test_policy_too_short_for_max_length_is_refused(tiny_dir):
    # The tiny policy has 128 positions; 128 sampled tokens + the EOS TRL appends cannot fit.
    with pytest.raises(ModelLoadError, match="lower sampling.max_length to at most 127"):
        load_policy(str(tiny_dir / "policy"), None, torch.device("cpu"), max_length=128)


def test_fused_gelu_gives_gpt2_the_same_outputs_and_gradients(tiny_dir):
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.activations import GELUTanh, NewGELUActivation

    from prefalign.models.loading import from_pretrained

    stock = AutoModelForCausalLM.from_pretrained(tiny_dir / "policy", dtype=torch.float32)
    fused = from_pretrained(AutoModelForCausalLM, str(tiny_dir / "policy"), "policy", None, dtype=torch.float32)
    assert any(isinstance(m, NewGELUActivation) for m in stock.modules())
    assert not any(isinstance(m, NewGELUActivation) for m in fused.modules())
    assert sum(isinstance(m, GELUTanh) for m in fused.modules()) == stock.config.n_layer
    ids = torch.randint(0, stock.config.vocab_size, (3, 16), generator=torch.Generator().manual_seed(0))
    outputs = [model(input_ids=ids, labels=ids) for model in (stock, fused)]
    torch.testing.assert_close(outputs[1].logits, outputs[0].logits, rtol=1e-5, atol=1e-5)
    for out in outputs:
        out.loss.backward()
    for (name, p), q in zip(stock.named_parameters(), fused.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert fused.config.activation_function == stock.config.activation_function  # what save_pretrained writes


def test_a_checkpoint_without_a_trained_classification_head_is_refused(tiny_dir):
    """A base or causal LM checkpoint as reward.model would score with a random head: refused."""
    from prefalign.models.loading import load_classifier

    with pytest.raises(ModelLoadError, match=r"not a trained sequence classifier.*score\.weight"):
        load_classifier(str(tiny_dir / "policy"), None, torch.device("cpu"))  # GPT-2 LM: no `score` head
    model, _ = load_classifier(str(tiny_dir / "reward"), None, torch.device("cpu"))  # a trained classifier loads
    assert model.config.id2label[1] == "POSITIVE"


def test_a_policy_checkpoint_without_its_lm_head_is_refused(tiny_dir, tmp_path):
    """A base model saved without its (untied) LM head would generate from a random head: refused."""
    import json

    from transformers import AutoModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    vocab = json.loads((tiny_dir / "policy" / "config.json").read_text())["vocab_size"]  # the tokenizer's below
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=64,
        )
    ).save_pretrained(tmp_path / "lm")
    AutoModel.from_pretrained(tmp_path / "lm").save_pretrained(tmp_path / "base")  # the same without lm_head
    for name in ("lm", "base"):
        (tmp_path / name / "tokenizer.json").write_text((tiny_dir / "policy" / "tokenizer.json").read_text())
        (tmp_path / name / "tokenizer_config.json").write_text(
            (tiny_dir / "policy" / "tokenizer_config.json").read_text()
        )
    assert load_policy(str(tmp_path / "lm"), None, torch.device("cpu"))[0].config.model_type == "llama"
    with pytest.raises(ModelLoadError, match=r"not a trained causal LM.*lm_head\.weight"):
        load_policy(str(tmp_path / "base"), None, torch.device("cpu"))


def test_what_a_local_models_own_files_refuse_is_found_before_loading_it(tiny_dir, tmp_path):
    """check_saved_model reads the directory's listing and config.json only (the planning step runs it)."""
    import json
    import shutil

    from prefalign.models.loading import ModelPathError
    from prefalign.models.saved import check_saved_model

    policy, reward = tmp_path / "policy", tmp_path / "reward"
    shutil.copytree(tiny_dir / "policy", policy)
    shutil.copytree(tiny_dir / "reward", reward)
    check_saved_model(str(policy), "policy", max_length=64)
    check_saved_model(str(reward), "reward", positive_label="positive")  # the case-insensitive match
    check_saved_model("lvwerra/gpt2-imdb", "policy", max_length=10**6)  # a hub id: checked once loaded
    with pytest.raises(ModelPathError, match=r"has 128 positions, but sampling.max_length is 128.*at most 127"):
        check_saved_model(str(policy), "policy", max_length=128)
    with pytest.raises(ModelPathError, match=r"'NOPE' is not a label.*0: 'NEGATIVE', 1: 'POSITIVE'"):
        check_saved_model(str(reward), "reward", positive_label="NOPE")
    with pytest.raises(ModelPathError, match="single_logit is set but reward.model has 2 outputs"):
        check_saved_model(str(reward), "reward", positive_label="POSITIVE", single_logit=True)
    config = json.loads((reward / "config.json").read_text())
    (reward / "config.json").write_text(json.dumps({**config, "id2label": {"0": "score"}, "label2id": {"score": 0}}))
    with pytest.raises(ModelPathError, match="single output"):
        check_saved_model(str(reward), "reward", positive_label="POSITIVE")
    check_saved_model(str(reward), "reward", positive_label="POSITIVE", single_logit=True)
    (reward / "config.json").write_text("[1, 2]")
    with pytest.raises(ModelPathError, match="config.json is not a JSON object"):
        check_saved_model(str(reward), "reward", positive_label="POSITIVE")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json"):
        (policy / name).unlink(missing_ok=True)
    with pytest.raises(ModelPathError, match=r"policy.model: .* has no tokenizer files.*save_pretrained"):
        check_saved_model(str(policy), "policy", max_length=64)


def test_a_model_of_the_wrong_kind_is_named_as_such_before_and_while_loading(tiny_dir, tmp_path):
    """A seq2seq model or a classifier as the policy, a causal LM as the reward: refused while planning
    by what config.json says, and (a hub model, checked only once loaded) in one line, not transformers'
    list of every class it has."""
    import json
    import shutil

    from transformers import T5Config, T5ForConditionalGeneration

    from prefalign.models.loading import ModelPathError, load_policy
    from prefalign.models.saved import check_saved_model

    T5ForConditionalGeneration(
        T5Config(vocab_size=64, d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8, decoder_start_token_id=0)
    ).save_pretrained(tmp_path / "t5")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_dir / "policy" / name, tmp_path / "t5" / name)
    with pytest.raises(
        ModelPathError, match=r"policy.model: .* is a 't5' model \(T5ForConditionalGeneration\).*no causal LM"
    ):
        check_saved_model(str(tmp_path / "t5"), "policy", max_length=32)
    with pytest.raises(ModelPathError, match=r"is a 'distilbert' model \(DistilBertForSequenceClassification\)"):
        check_saved_model(str(tiny_dir / "reward"), "policy", max_length=32)
    with pytest.raises(
        ModelPathError, match=r"reward.model: .* was saved as GPT2LMHeadModel, not as a sequence classifier"
    ):
        check_saved_model(str(tiny_dir / "policy"), "reward", positive_label="POSITIVE")
    # A custom-code model (its classes named in auto_map, code shipped with the checkpoint) is named as such.
    shutil.copytree(tiny_dir / "policy", tmp_path / "custom")
    config = json.loads((tmp_path / "custom" / "config.json").read_text())
    config.update(model_type="mycustom", auto_map={"AutoModelForCausalLM": "modeling_my.MyCustomForCausalLM"})
    (tmp_path / "custom" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelPathError, match=r"'mycustom' model .* code of its own .*`policy.trust_remote_code: true`"):
        check_saved_model(str(tmp_path / "custom"), "policy", max_length=32)
    check_saved_model(str(tmp_path / "custom"), "policy", max_length=32, trust_remote_code=True)  # trusted: loads
    with pytest.raises(ModelPathError, match=r"own code has no AutoModelForSequenceClassification"):
        check_saved_model(str(tmp_path / "custom"), "reward", positive_label="POSITIVE", trust_remote_code=True)
    with pytest.raises(
        ModelLoadError, match=r"cannot load local directory .*: a 't5' model is not a causal LM"
    ) as caught:
        load_policy(str(tmp_path / "t5"), None, torch.device("cpu"))
    assert "GPT2Config" not in str(caught.value)
    # A classifier's config.json without id2label has transformers' two default classes.
    shutil.copytree(tiny_dir / "reward", tmp_path / "reward")
    config = json.loads((tmp_path / "reward" / "config.json").read_text())
    (tmp_path / "reward" / "config.json").write_text(
        json.dumps({k: v for k, v in config.items() if k not in ("id2label", "label2id")})
    )
    check_saved_model(str(tmp_path / "reward"), "reward", positive_label="LABEL_1")
    with pytest.raises(ModelPathError, match=r"0: 'LABEL_0', 1: 'LABEL_1'"):
        check_saved_model(str(tmp_path / "reward"), "reward", positive_label="POSITIVE")


def test_a_policy_tokenizer_without_eos_is_refused_by_name(tiny_dir, tmp_path):
    """Texts could not end, and TRL appends EOS in training (it was a TypeError deep in decoding)."""
    import shutil

    from transformers import AutoTokenizer

    from prefalign.models.loading import load_tokenizer

    shutil.copytree(tiny_dir / "policy", tmp_path / "policy")
    tok = AutoTokenizer.from_pretrained(tmp_path / "policy")
    tok.eos_token = None
    tok.save_pretrained(tmp_path / "policy")
    with pytest.raises(ModelLoadError, match=r"policy.model .* its tokenizer has no EOS token"):
        load_tokenizer(str(tmp_path / "policy"), None, "policy")
    assert load_tokenizer(str(tiny_dir / "policy"), None, "policy").eos_token_id is not None


def test_a_classifier_tokenizer_without_a_pad_token_pads_with_another_and_scores_the_same(tiny_dir, tmp_path):
    """Padding is masked, so any token serves; before, a tokenizer with no pad, EOS or UNK token failed."""
    import shutil

    from transformers import AutoTokenizer

    from prefalign.engine.scoring import score_texts
    from prefalign.models.loading import load_classifier

    shutil.copytree(tiny_dir / "reward", tmp_path / "reward")
    tok = AutoTokenizer.from_pretrained(tmp_path / "reward")
    tok.pad_token = tok.unk_token = tok.eos_token = None
    tok.save_pretrained(tmp_path / "reward")
    texts = ["A fine film.", "A long, slow and very dull story about nothing at all, really.", "Bad."]
    scores = []
    for directory in (tiny_dir / "reward", tmp_path / "reward"):
        model, tokenizer = load_classifier(str(directory), None, torch.device("cpu"))
        assert tokenizer.pad_token_id is not None
        scores.append(score_texts(texts, model, tokenizer, 1, 8)["reward"])
    assert scores[0] == pytest.approx(scores[1], abs=1e-5)


def test_a_model_directory_without_weights_is_named_while_planning_and_loading(tiny_dir, tmp_path):
    """E.g. a run's model whose weights were deleted to save disk: the message says how to train it again."""
    import shutil

    from prefalign.models.loading import ModelPathError
    from prefalign.models.saved import check_saved_model

    shutil.copytree(tiny_dir / "policy", tmp_path / "policy")
    (tmp_path / "policy" / "model.safetensors").unlink()
    with pytest.raises(ModelPathError, match=r"policy.model: .* holds no weights .* delete its directory and rerun"):
        check_saved_model(str(tmp_path / "policy"), "policy", max_length=32)
    with pytest.raises(ModelLoadError, match=r"policy model: .* holds no weights"):
        load_policy(str(tmp_path / "policy"), None, torch.device("cpu"))


def test_a_damaged_weights_file_is_named(tiny_dir, tmp_path):
    """A weights file cut short (a full disk while copying, a damaged disk) is named with what to do."""
    import shutil

    shutil.copytree(tiny_dir / "policy", tmp_path / "policy")
    weights = tmp_path / "policy" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(
        ModelLoadError, match=r"policy model: the weights in .* cannot be read .* damaged or incomplete"
    ):
        load_policy(str(tmp_path / "policy"), None, torch.device("cpu"))


def test_a_hub_model_that_needs_its_own_code_is_named_as_such(monkeypatch):
    from prefalign.models import loading

    asked = []

    class NeedsCode:  # what transformers raises for a hub checkpoint with custom modelling code
        @staticmethod
        def from_pretrained(*args, **kwargs):
            asked.append(kwargs["trust_remote_code"])  # always given: transformers would otherwise ask on a terminal
            raise ValueError(
                "The repository org/custom contains custom code which must be executed to correctly load "
                "the model. Please pass the argument `trust_remote_code=True` to allow custom code to be run."
            )

    monkeypatch.setattr(loading, "_go_offline_if_hub_unreachable", lambda: None)
    with pytest.raises(
        ModelLoadError,
        match=r"policy model 'org/custom' runs modelling code of its own .* set "
        r"`policy.trust_remote_code: true`",
    ):
        loading.from_pretrained(NeedsCode, "org/custom", "policy", None)
    assert asked == [False]


def test_a_tokenizer_from_another_model_is_refused_when_loading(tiny_dir, tmp_path):
    """A tokenizer whose ids run past the model's embedding (saved from another model) would let sampling
    run and fail training or scoring with an IndexError; it is named at load time instead."""
    import json
    import shutil

    from prefalign.models.loading import load_classifier

    rows = json.loads((tiny_dir / "policy" / "config.json").read_text())["vocab_size"]
    for role, load in (
        ("policy", lambda d: load_policy(d, None, torch.device("cpu"))),
        ("reward", lambda d: load_classifier(d, None, torch.device("cpu"))),
    ):
        shutil.copytree(tiny_dir / role, tmp_path / role)
        # The same tokenizer with a larger vocabulary than the model has rows, as another model's would have.
        spec = json.loads((tiny_dir / role / "tokenizer.json").read_text())
        spec["model"]["vocab"].update({f"zz{i}": rows + 100 + i for i in range(100)})
        (tmp_path / role / "tokenizer.json").write_text(json.dumps(spec))
        with pytest.raises(
            ModelLoadError, match=rf"{role} model .* token ids up to \d+, but the model embeds only {rows}"
        ):
            load(str(tmp_path / role))
        load(str(tiny_dir / role))  # its own tokenizer: fine


def test_the_tiny_classifier_scores_positive_opinions_above_their_negative_twins(tiny_dir, tiny_classifier):
    """The built-in classifier learned the synthetic corpus' sentiment: its held-out accuracy is high,
    and of two opinions in that corpus' words that differ in their adjective alone, the one with the
    positive adjective gets a positive reward and the other a negative one (whatever the tail, such
    as "and I loved it", which the corpus gives to both classes)."""
    import json

    from prefalign.engine.scoring import score_texts

    info = json.loads((tiny_dir / "info.json").read_text())["reward_model"]
    assert info["held_out_texts"] == 100 and info["accuracy"] >= 0.95
    frames = [
        "The acting was truly {}.",
        "This movie is very {} and I loved it.",
        "The ending seemed quite {} overall.",
        "The script feels really {} , a waste of time.",
        "The cast is {} from start to finish.",
    ]
    adjectives = [
        ("wonderful", "tedious"),
        ("charming", "bland"),
        ("superb", "painful"),
        ("funny", "boring"),
        ("brilliant", "awful"),
    ]
    clf, tok = tiny_classifier
    good = score_texts([f.format(g) for f, (g, _) in zip(frames, adjectives)], clf, tok, positive_index=1)["reward"]
    bad = score_texts([f.format(b) for f, (_, b) in zip(frames, adjectives)], clf, tok, positive_index=1)["reward"]
    assert (good > 1).all() and (bad < -1).all(), (good, bad)
