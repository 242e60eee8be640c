import pytest

from prefalign.cli import main
from prefalign.config.loader import ConfigError, describe, load_config
from prefalign.config.schema import Config


def write(tmp_path, text):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return str(path)


def test_empty_config_is_the_reference_experiment(tmp_path):
    cfg = load_config(write(tmp_path, ""))
    assert cfg.name == "exp"
    assert cfg.policy.model == "lvwerra/gpt2-imdb" and cfg.reward.model == "lvwerra/distilbert-imdb"
    assert (cfg.sampling.num_samples, cfg.sampling.max_length, cfg.sampling.top_k, cfg.sampling.top_p) == (
        10000,
        64,
        50,
        0.85,
    )
    assert (cfg.pairs.count, cfg.pairs.margin, cfg.pairs.threshold) == (20000, 1.0, 0.5)
    assert (cfg.evaluate.runs, cfg.evaluate.samples) == (10, 5000)
    assert str(cfg.run_path) == "runs/exp"


def test_misspelled_key_is_named_with_a_suggestion(tmp_path):
    with pytest.raises(ConfigError, match=r"`train.betaz`: unknown key \(did you mean `train.betas`\?\)"):
        load_config(write(tmp_path, "train:\n  betaz: [0.1]\n"))


def test_unknown_top_level_section(tmp_path):
    with pytest.raises(ConfigError, match="`sampler`: unknown key"):
        load_config(write(tmp_path, "sampler: {}\n"))


def test_wrong_type_is_named(tmp_path):
    with pytest.raises(ConfigError, match="`sampling.num_samples`"):
        load_config(write(tmp_path, "sampling:\n  num_samples: lots\n"))


@pytest.mark.parametrize(
    "text, key",
    [
        ("sampling: {top_p: 1.5}", "sampling.top_p"),
        ("pairs: {count: 0}", "pairs.count"),
        ("pairs: {strategies: [random, best]}", "pairs.strategies"),
        ("pairs: {strategies: []}", "pairs.strategies"),
        ("train: {betas: [0.1, -1]}", "train.betas"),
        ("train: {losses: [sigmoid, dpo]}", "train.losses"),
        ("train: {recipe: fast}", "train.recipe"),
        ("train: {dpo: {learning_rat: 0.1}}", "train.dpo"),
        ("train: {dpo: {beta: 0.3}}", "train.dpo"),
        ("iterative: {dpo: {beta: 0.3}}", "iterative.dpo`: `beta` is set by prefalign .use iterative.betas"),
        ("iterative: {dpo: {learning_rat: 1e-5}}", "iterative.dpo`: `learning_rat` is not a DPOConfig field"),
        ("iterative: {beta_growth: 0}", "iterative.beta_growth"),
        ("evaluate: {runs: 0}", "evaluate.runs"),
        ("sampling: {max_length: 1}", "sampling.max_length"),
    ],
)
def test_impossible_values_are_rejected_with_their_key(tmp_path, text, key):
    with pytest.raises(ConfigError, match=f"`{key}"):
        load_config(write(tmp_path, text))


def test_dpo_values_are_type_checked_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match="`learning_rate`: 'fast' is not a number"):
        load_config(write(tmp_path, "train: {dpo: {learning_rate: fast}}"))
    with pytest.raises(ConfigError, match="`per_device_train_batch_size`: 2.5 is not an integer"):
        load_config(write(tmp_path, "train: {dpo: {per_device_train_batch_size: 2.5}}"))
    cfg = load_config(write(tmp_path, "train: {dpo: {optim: adamw_torch, loss_weights: [1, 0.5], max_length: null}}"))
    assert cfg.train.dpo == {"optim": "adamw_torch", "loss_weights": [1.0, 0.5], "max_length": None}


def test_dpo_field_typo_gets_a_hint(tmp_path):
    with pytest.raises(ConfigError, match="did you mean `learning_rate`"):
        load_config(write(tmp_path, "train: {dpo: {learning_rat: 0.1}}"))


def test_set_overrides_parse_values_as_yaml(tmp_path):
    cfg = load_config(write(tmp_path, ""), ["train.betas=[0.5,2]", "sampling.top_k=10", "train.dpo.learning_rate=1e-4"])
    assert cfg.train.betas == [0.5, 2.0]
    assert cfg.sampling.top_k == 10
    assert cfg.train.dpo == {"learning_rate": 1e-4}


def test_set_with_unknown_key_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="`evaluate.run`: unknown key"):
        load_config(write(tmp_path, ""), ["evaluate.run=3"])


def test_set_without_equals_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_config(write(tmp_path, ""), ["evaluate.runs"])


def test_non_mapping_yaml_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_a_key_given_twice_is_refused_with_both_lines_not_silently_overwritten(tmp_path):
    text = "train:\n  betas: [0.5]\nsampling:\n  num_samples: 100\ntrain:\n  losses: [hinge]\n"
    with pytest.raises(ConfigError, match=r"key 'train' a second time \(first on line 1\)(.|\n)*line 5"):
        load_config(write(tmp_path, text))
    with pytest.raises(ConfigError, match=r"key 'learning_rate' a second time"):
        load_config(write(tmp_path, "train:\n  dpo:\n    learning_rate: 1.0e-5\n    learning_rate: 1.0e-3\n"))
    with pytest.raises(ConfigError, match=r"--set train.dpo: (.|\n)*key 'a' a second time"):
        load_config(write(tmp_path, ""), ["train.dpo={a: 1, a: 2}"])
    # A YAML merge key (`<<: *anchor`) may still be overridden by a key given beside it.
    cfg = load_config(write(tmp_path, "train:\n  <<: {betas: [0.5], seed: 1}\n  betas: [0.2]\n"))
    assert cfg.train.betas == [0.2] and cfg.train.seed == 1


def test_one_value_where_a_list_is_expected_is_a_list_of_one(tmp_path):
    text = "pairs:\n  strategies: margin\ntrain:\n  losses: {types: [hinge, sft], weights: [1, 0.1]}\n"
    cfg = load_config(
        write(tmp_path, text),
        [
            "train.betas=0.5",
            "train.extra={strategy: random, loss: ipo, beta: 0.3}",
            "train.lora={target_modules: all-linear}",
            "evaluate.reward_thresholds=1",
        ],
    )
    assert cfg.pairs.strategies == ["margin"] and cfg.train.betas == [0.5] and cfg.evaluate.reward_thresholds == [1.0]
    assert cfg.train.losses[0].types == ["hinge", "sft"] and [e.beta for e in cfg.train.extra] == [0.3]
    assert cfg.train.lora.target_modules == "all-linear"  # a field that takes one value keeps it
    with pytest.raises(ConfigError, match="`pairs.interval`"):  # a pair is not a list of any length
        load_config(write(tmp_path, ""), ["pairs.interval=1"])
    with pytest.raises(ConfigError, match=r"`train.betas.0`: 'fast' is not a number"):  # still checked
        load_config(write(tmp_path, ""), ["train.betas=fast"])


def test_presets_are_found_by_name():
    cfg = load_config("tiny")
    assert cfg.name == "tiny" and cfg.policy.model == "prefalign:tiny"


def test_missing_config_lists_presets():
    with pytest.raises(ConfigError, match="presets: .*tiny"):
        load_config("no-such-config")


def test_cli_exits_2_naming_the_key(tmp_path, capsys):
    path = write(tmp_path, "pairs:\n  stratgies: [random]\n")
    assert main(["run", path]) == 2
    assert "`pairs.stratgies`: unknown key" in capsys.readouterr().err


def test_cli_set_error_exits_2(tmp_path, capsys):
    assert main(["train", write(tmp_path, ""), "--set", "train.betas=oops"]) == 2
    assert "`train.betas.0`: 'oops' is not a number" in capsys.readouterr().err  # as a list of one


def test_every_field_has_help_and_a_default():
    rows = describe(Config)
    assert len(rows) > 25
    for key, _default, help_text in rows:
        assert help_text, key


def test_the_config_reference_page_is_current(capsys):
    from pathlib import Path

    assert main(["config-help", "--markdown"]) == 0
    table = capsys.readouterr().out.strip()
    readme = (Path(__file__).parents[1] / "docs" / "config.md").read_text()
    start, end = readme.index("<!-- config-reference:start -->"), readme.index("<!-- config-reference:end -->")
    assert readme[start:end].split("\n", 1)[1].strip() == table


def test_prefalign_training_switches_are_accepted_in_train_dpo():
    cfg = load_config("tiny", ["train.dpo.group_by_length=false", "train.dpo.completion_only_head=true"])
    assert (cfg.train.dpo["group_by_length"], cfg.train.dpo["completion_only_head"]) == (False, True)
    with pytest.raises(ConfigError, match="group_by_length"):
        load_config("tiny", ["train.dpo.group_by_length=3"])
    assert load_config("tiny", ["train.dpo.compile_step=graphs"]).train.dpo["compile_step"] == "graphs"
    # YAML reads `off` as false: the message lists the values that are accepted.
    for wrong in ("off", "true", "fast"):
        with pytest.raises(ConfigError, match="`compile_step` must be one of eager, fused, graphs, auto"):
            load_config("tiny", [f"train.dpo.compile_step={wrong}"])


def test_loss_entries_and_extra_points_are_validated_with_clear_messages():
    cfg = load_config(
        "tiny",
        [
            "train.losses=[slic, {types: [sigmoid, sft], weights: [1, 0.5]}]",
            "train.extra=[{strategy: quantile, loss: ipo, beta: 0.5, recipe: seed}]",
        ],
    )
    assert cfg.train.losses[0] == "slic" and cfg.train.losses[1].label() == "sigmoid+0.5sft"
    with pytest.raises(ConfigError) as e:
        load_config("tiny", ["train.losses=[{types: [sigmod]}]"])
    assert "`train.losses.0`: unknown loss 'sigmod'" in str(e.value) and "valid string" not in str(e.value)
    with pytest.raises(ConfigError, match="did you mean 'sigmoid'"):
        load_config("tiny", ["train.losses=[sigmoi]"])
    with pytest.raises(ConfigError, match="2 weights for 1 types"):
        load_config("tiny", ["train.losses=[{types: [ipo], weights: [1, 2]}]"])
    with pytest.raises(ConfigError, match="unknown pair strategy 'best'"):
        load_config("tiny", ["train.extra=[{strategy: best, loss: ipo, beta: 1}]"])
    with pytest.raises(ConfigError, match="losses must not repeat"):
        load_config("tiny", ["train.losses=[sigmoid, {types: [sigmoid]}]"])


def test_new_sections_reject_impossible_values():
    for bad, needle in [
        ("pairs.interval=[2, 1]", "low < high"),
        ("pairs.quantile=0.7", "pairs.quantile"),
        ("sampling.prompts={corpus: x, max_tokens: 40}", "no room"),
        ("iterative.strategy=nope", "unknown pair strategy"),
        ("online.steps=0", "online.steps"),
    ]:
        with pytest.raises(ConfigError, match=needle):
            load_config("tiny", [bad])


def test_online_rloo_fields_are_checked_against_rloo_config():
    assert load_config("tiny", ["online.rloo={num_generations: 8}"]).online.rloo == {"num_generations": 8}
    with pytest.raises(ConfigError, match="is set by prefalign"):
        load_config("tiny", ["online.rloo={beta: 0.1}"])
    with pytest.raises(ConfigError, match="did you mean `learning_rate`"):
        load_config("tiny", ["online.rloo={lerning_rate: 0.1}"])
    with pytest.raises(ConfigError, match="num_generations"):
        load_config("tiny", ["online.rloo={num_generations: many}"])


def test_report_to_names_installed_trackers(monkeypatch):
    import importlib.util

    assert load_config("tiny", ["train.report_to=[tensorboard, tensorboard]"]).train.report_to == ["tensorboard"]
    for trainer in ("train.dpo", "online.rloo"):
        for field in ("report_to", "run_name", "project"):
            with pytest.raises(ConfigError, match=r"use train.report_to"):
                load_config("tiny", [f"{trainer}={{{field}: x}}"])
    with pytest.raises(ConfigError, match="should be 'tensorboard' or 'trackio'"):
        load_config("tiny", ["train.report_to=[wandb]"])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "trackio" else real(name, *a))
    with pytest.raises(ConfigError, match=r"trackio not installed here: `pip install trackio`"):
        load_config("tiny", ["train.report_to=[trackio]"])


def test_builtin_model_names_are_checked_when_the_config_loads():
    """Exit 2 before any work, not once the sample stage loads the policy."""
    with pytest.raises(ConfigError, match=r"prefalign:demo-minilm' is a classifier only: use it as reward.model"):
        load_config("tiny", ["policy.model=prefalign:demo-minilm"])
    with pytest.raises(ConfigError, match=r"unknown built-in model 'prefalign:dmeo'; available: prefalign:tiny"):
        load_config("tiny", ["reward.model=prefalign:dmeo"])
    assert load_config("tiny", ["reward.model=prefalign:demo-minilm"]).reward.model == "prefalign:demo-minilm"


def test_a_numeric_positive_label_is_the_label_s_name():
    """A classifier whose labels are `1`..`5` (stars): `positive_label: 5` in YAML is an int, meant as the name."""
    cfg = load_config("tiny", ["reward.positive_label=5"])
    assert cfg.reward.positive_label == "5"
    with pytest.raises(ConfigError, match="positive_label"):
        load_config("tiny", ["reward.positive_label=true"])  # a boolean is no label name


@pytest.mark.parametrize(
    "dpo,needle",
    [
        ("{per_device_train_batch_size: 0}", "`per_device_train_batch_size` must be >= 1, not 0"),
        ("{gradient_accumulation_steps: 0}", "`gradient_accumulation_steps` must be >= 1"),
        ("{learning_rate: -1}", "`learning_rate` must be >= 0"),
        ("{num_train_epochs: 0}", "`num_train_epochs` must be > 0"),
        ("{max_steps: 0}", "`max_steps` must be > 0, or -1"),
        ("{warmup_steps: -5}", "`warmup_steps` must be >= 0"),
        ("{logging_steps: 0}", "`logging_steps` must be > 0"),
        ("{lr_scheduler_type: cosin}", "'cosin' is not one of linear, cosine.*did you mean 'cosine'"),
        ("{optim: rmsprp}", "did you mean 'rmsprop'"),
        ("{eval_strategy: steps}", "no evaluation set"),
        ("{load_best_model_at_end: true}", "no evaluation set"),
        ("{push_to_hub: true}", "hf upload"),
        ("{torch_compile: true}", "compile_step"),
    ],
)
def test_trainer_values_that_failed_mid_run_are_refused_with_the_field(dpo, needle):
    """Each of these passed the type check and failed after sampling with a traceback from the
    DataLoader, torch's optimizer, transformers or the hub client."""
    for key in ("train.dpo", "iterative.dpo", "online.rloo"):
        owned = key == "online.rloo" and "max_steps" in dpo  # RLOO's steps are online.steps
        with pytest.raises(ConfigError, match="is set by prefalign" if owned else needle):
            load_config("tiny", [f"{key}={dpo}"])


def test_trainer_values_within_bounds_and_machine_specific_ones_plan_anywhere():
    fine = (
        "{lr_scheduler_type: cosine, optim: adamw_torch_fused, bf16: true, tf32: true, max_steps: -1, "
        "eval_strategy: 'no', torch_compile: false, warmup_steps: 0.1, logging_steps: 0.5, deepspeed: ds.json}"
    )
    assert load_config("tiny", [f"train.dpo={fine}"]).train.dpo["optim"] == "adamw_torch_fused"
    # YAML reads an unquoted `no` as false; for a field whose choices include "no" it is that choice.
    assert load_config("tiny", ["train.dpo={eval_strategy: no, save_strategy: no}"]).train.dpo == {
        "eval_strategy": "no",
        "save_strategy": "no",
    }


def test_a_papers_loss_name_points_to_its_name_here():
    with pytest.raises(ConfigError, match="unknown loss 'DPO' \\(did you mean 'sigmoid'\\?\\)"):
        load_config("tiny", ["train.losses=[DPO]"])
    with pytest.raises(ConfigError, match="did you mean 'slic'"):
        load_config("tiny", ["train.losses=[SLiC-HF]"])


def test_a_setting_whose_package_is_missing_is_one_line_but_our_import_bugs_stay_tracebacks():
    from transformers.utils.versions import require_version

    from prefalign.errors import package_problem

    with pytest.raises(ImportError) as missing:
        require_version("no-such-package-prefalign>=1.0", "pip install no-such-package-prefalign")
    assert "no-such-package-prefalign" in package_problem(missing.value)
    assert package_problem(
        ImportError(
            "You have set `use_liger_kernel` to `True` but liger-kernel >= 0.3.0 is not "
            "available. Please install it with `pip install liger-kernel`"
        )
    )
    assert package_problem(ImportError("cannot import name 'load_polcy' from 'prefalign.models'")) is None
    assert package_problem(ValueError("pip install x")) is None


def test_an_unknown_baseline_is_refused_naming_the_key():
    with pytest.raises(
        ConfigError, match=r"`report.baseline`: unknown baseline 'sed': name a recipe \(seed, default\)"
    ):
        load_config("tiny", ["report.baseline=sed"])
    assert main(["plan", "tiny", "--set", "report.baseline=original"]) == 2  # the original is never beaten on KL
    assert load_config("tiny", ["report.baseline="]).report.baseline is None
    assert load_config("tiny").report.baseline == "seed"  # the default: the comparison every report made before
    for preset in ("aligned", "headroom", "frontier", "demo", "imdb"):  # the presets whose reports compare with `seed`
        assert load_config(preset).report.baseline == "seed"


@pytest.mark.parametrize(
    "override, key, words",
    [
        ("train.dpo.learning_rate=fast", "`train.dpo`: `learning_rate`", "'fast' is not a number"),
        ("train.dpo.per_device_train_batch_size=many", "`per_device_train_batch_size`", "'many' is not an integer"),
        ("train.dpo.bf16=maybe", "`bf16`", "'maybe' is not true or false, or empty"),
        ("train.dpo.label_names=3", "`label_names`", "3 is not a list or empty"),
        ("online.rloo.num_generations=two", "`online.rloo`: `num_generations`", "'two' is not an integer"),
        ("sampling.top_p=high", "`sampling.top_p`", "'high' is not a number"),
        ("sampling.seed=abc", "`sampling.seed`", "'abc' is not an integer"),
        ("sampling.num_samples=2.5", "`sampling.num_samples`", "2.5 is not an integer"),
        ("evaluate.kl=maybe", "`evaluate.kl`", "'maybe' is not true or false"),
        ("name=[1]", "`name`", r"\[1\] is not text"),
        ("pairs.interval=x", "`pairs.interval`", "'x' is not a list"),
        ("sampling.prompts=5", "`sampling.prompts`", "5 is not a mapping"),
        ("train.losses=[3]", "`train.losses.0`", "3 is not text or a mapping"),
    ],
)
def test_a_value_of_the_wrong_type_is_named_with_the_type_in_words(override, key, words):
    with pytest.raises(ConfigError, match=f"{key}.*: {words}") as refused:
        load_config("tiny", [override])
    assert "<class" not in str(refused.value) and "Input should be" not in str(refused.value)


def test_an_integer_given_to_a_float_trainer_field_stays_an_integer_in_the_resolved_config(tmp_path, capsys):
    """`logging_steps: 5` (TRL types it float) is printed 5, not 5.0, wherever the resolved config is:
    config.yaml, report.html and `prefalign config`; it is the same float to TRL and to every key."""
    import json

    import yaml

    from prefalign.report.html import render

    cfg = load_config("tiny", ["train.dpo.num_train_epochs=2", "iterative.dpo={max_grad_norm: 1}"])
    dpo = cfg.train.dpo
    assert dpo["logging_steps"] == 5.0 and isinstance(dpo["logging_steps"], float)
    resolved = yaml.safe_dump(cfg.model_dump(), sort_keys=False)
    assert "logging_steps: 5\n" in resolved and "num_train_epochs: 2\n" in resolved
    assert "max_grad_norm: 1\n" in resolved and "learning_rate: 0.001\n" in resolved
    assert yaml.safe_load(resolved)["train"]["dpo"]["logging_steps"] == 5  # and read back, the same config
    # The keys are those of a run made before: json writes the float as it did.
    assert json.dumps(dpo, sort_keys=True) == '{"learning_rate": 0.001, "logging_steps": 5.0, "num_train_epochs": 2.0}'
    page = render("# report", tmp_path, cfg.model_dump(), "cpu", "tiny")
    assert "logging_steps: 5\n" in page and "logging_steps: 5.0" not in page
    assert main(["config", "tiny"]) == 0
    assert "logging_steps: 5\n" in capsys.readouterr().out
