"""The plan as data: which items a config gives, their order, paths and keys, without running anything."""

from __future__ import annotations

import pytest

from prefalign.config.loader import load_config
from prefalign.pipeline.items import (
    DpoModel,
    Evaluation,
    IterativeRound,
    Original,
    Pairs,
    Report,
    RewardModel,
    RlooModel,
    Samples,
)
from prefalign.pipeline.plan import STAGE_NAMES, plan, stage_of
from prefalign.pipeline.runner import STAGES, select

ORIGINAL = Original("gpt2-imdb", None, "hub:gpt2-imdb@main")
REWARD = RewardModel("distilbert-imdb", None, "POSITIVE", "hub:distilbert-imdb@main")


def items_of(*overrides, source="demo", original=ORIGINAL, reward=REWARD):
    return plan(load_config(source, list(overrides)), original, reward)


def keys(items) -> dict[str, str]:
    """name -> key, with the item type in the name so samples, pairs and models never collide."""
    return {f"{type(item).__name__} {item.name}": item.key for item in items}


def changed_keys(*overrides, source="demo") -> set[str]:
    before, after = keys(items_of(source=source)), keys(items_of(*overrides, source=source))
    assert set(before) == set(after), set(before) ^ set(after)
    return {name for name in before if before[name] != after[name]}


def test_demo_plan_has_the_original_grid_and_every_stage():
    items = items_of()
    count = lambda kind: sum(type(i) is kind for i in items)  # noqa: E731
    assert (count(Samples), count(Pairs), count(DpoModel), count(Evaluation), count(Report)) == (1, 3, 12, 13, 1)
    assert {stage_of(i) for i in items} == set(STAGE_NAMES)
    names = [i.name for i in items if type(i) is DpoModel]
    assert names[:2] == ["random-sigmoid-beta0.1-seed", "random-sigmoid-beta1-seed"] and len(set(names)) == 12


def test_every_item_type_has_a_stage_function():
    judge = "evaluate.judges=[{name: j, model: 'prefalign:tiny'}]"
    items = items_of("iterative.rounds=3", "online.kl_coefs=[0.1]", "baselines.best_of_n=[2]", judge)
    assert {type(i) for i in items} == set(STAGES)


def test_items_come_after_their_inputs_and_stages_in_order():
    items = items_of(
        "iterative.rounds=3",
        "online.kl_coefs=[0.1]",
        "pairs.strategies=[random, quantile]",
        "baselines.best_of_n=[2, 4]",
        "evaluate.judges=[{name: j, model: 'prefalign:tiny'}]",
    )
    position = {id(item): i for i, item in enumerate(items)}
    for i, item in enumerate(items):
        for needed in item.inputs:
            if not isinstance(needed, Original):
                assert position[id(needed)] < i, (item.name, needed.name)
    stages = [STAGE_NAMES.index(stage_of(i)) for i in items]
    assert stages == sorted(stages)


def test_paths_and_keys_are_unique():
    items = items_of(
        "iterative.rounds=3",
        "iterative.losses=[sigmoid, hinge]",
        "online.kl_coefs=[0.1, 0.2]",
        "train.extra=[{strategy: quantile, loss: ipo, beta: 0.5}]",
    )
    paths = [item.path for item in items]
    assert len(set(paths)) == len(paths)
    assert len(set(keys(items).values())) == len(items)


def test_two_models_with_one_directory_are_refused():
    from prefalign.pipeline.plan import PlanError

    with pytest.raises(PlanError, match="random-sigmoid-beta0.1-seed"):
        items_of("train.extra=[{strategy: random, loss: {types: [hinge], name: sigmoid}, beta: 0.1}]")


def test_a_point_asked_for_twice_is_planned_once():
    items = items_of("train.extra=[{strategy: random, loss: sigmoid, beta: 0.1}]")
    assert sum(type(i) is DpoModel for i in items) == 12


def test_iterative_round_one_is_the_grid_model():
    items = items_of("iterative.rounds=3", "iterative.strategy=random", "iterative.recipe=seed")
    grid = next(i for i in items if type(i) is DpoModel and i.name == "random-sigmoid-beta0.1-seed")
    round_2, round_3 = [i for i in items if type(i) is IterativeRound]
    assert round_2.start is grid and round_3.start is round_2
    assert round_2.pairs.samples.policy is grid and round_2.reference is round_3.reference is grid.reference
    assert sum(type(i) is DpoModel for i in items) == 12  # no separate round-1 model
    report = items[-1]
    assert report.chains == ((grid, round_2, round_3),)


def test_a_chain_outside_the_grid_adds_its_round_one():
    items = items_of("iterative.rounds=2", "iterative.strategy=quantile", "iterative.recipe=default")
    added = [i for i in items if type(i) is DpoModel and i.pairs.strategy == "quantile"]
    assert [m.name for m in added] == ["quantile-sigmoid-beta0.1-default"]
    assert added[0].pairs.path.name == "quantile.parquet" and added[0].start is ORIGINAL


def test_iterative_dpo_settings_change_the_chain_only():
    base = "iterative.rounds=3", "iterative.strategy=margin", "iterative.recipe=default", "train.dpo.num_train_epochs=2"
    items = items_of(*base, "iterative.dpo.learning_rate=2.5e-5")
    chain = [i for i in items if isinstance(i, DpoModel) and i.recipe == "default"]
    assert [m.name for m in chain] == [
        "margin-sigmoid-beta0.1-default",
        "iter-margin-sigmoid-beta0.1-default-r2",
        "iter-margin-sigmoid-beta0.1-default-r3",
    ]
    # the chain's settings go on top of train.dpo; the grid keeps train.dpo alone
    assert all(m.overrides == {"num_train_epochs": 2, "learning_rate": 2.5e-5} for m in chain)
    assert all(i.overrides == {"num_train_epochs": 2} for i in items if type(i) is DpoModel and i.recipe == "seed")
    before, after = keys(items_of(*base)), keys(items)
    changed = {name for name in before if before[name] != after[name]}
    assert "DpoModel random-sigmoid-beta0.1-seed" in before and "Samples samples" in before
    assert changed and all(
        "margin-sigmoid-beta0.1-default" in n or n.startswith(("Evaluation", "Report")) for n in changed
    ), changed


def test_a_beta_schedule_grows_beta_round_by_round():
    items = items_of("iterative.rounds=4", "iterative.strategy=margin", "iterative.beta_growth=1.5")
    rounds = [i for i in items if type(i) is IterativeRound]
    assert [(m.name, m.beta) for m in rounds] == [
        (f"iter-margin-sigmoid-beta0.1-seed-growth1.5-r{r}", b) for r, b in ((2, 0.15), (3, 0.225), (4, 0.3375))
    ]
    assert rounds[0].start.name == "margin-sigmoid-beta0.1-seed" and rounds[0].start.beta == 0.1  # round 1: the grid's
    assert [m.row()["beta"] for m in rounds] == [0.15, 0.225, 0.3375]  # the beta column of results.csv


def test_stage_commands_select_items_without_later_inputs():
    items = items_of("iterative.rounds=2")
    pairs_only = select(items, "pairs")
    assert {type(i) for i in pairs_only} == {Samples, Pairs}
    # round 2's samples need a trained model: they belong to `train`, not `sample`
    assert all(i.policy is ORIGINAL for i in pairs_only if type(i) is Samples)
    assert len(select(items, "report")) == len(items)


def test_a_new_beta_adds_models_and_changes_no_existing_key():
    before, after = keys(items_of()), keys(items_of("train.betas=[0.1, 1.0, 0.5]"))
    added = set(after) - set(before)
    assert {n for n in added if n.startswith("DpoModel")} == {
        f"DpoModel {s}-{loss}-beta0.5-seed" for s in ("random", "margin", "threshold") for loss in ("sigmoid", "hinge")
    }
    assert {name for name in before if before[name] != after[name]} == {"Report report"}


def test_a_pair_rule_setting_changes_only_that_rule_and_what_follows():
    changed = changed_keys("pairs.margin=1.5")
    margin_models = {f"{s}-{b}-seed" for s in ("margin-sigmoid", "margin-hinge") for b in ("beta0.1", "beta1")}
    assert changed == (
        {"Pairs pairs margin", "Report report"}
        | {f"DpoModel {m}" for m in margin_models}
        | {f"Evaluation evaluate {m}" for m in margin_models}
        | {f"TextScores {scorer} scores of {m}" for m in margin_models for scorer in ("other", "fluency")}
        | {f"TrajectoryScores other scores of {m}'s training curve" for m in margin_models}  # demo: judge only
    )


def test_a_training_setting_keeps_samples_and_pairs():
    changed = changed_keys("train.dpo.learning_rate=1e-4")
    assert not any(name.startswith(("Samples", "Pairs")) for name in changed)
    assert "Evaluation evaluate original" not in changed and not any(name.endswith("best-of-N") for name in changed)
    # models, evaluations, their judge and fluency scores, the judge's scores of their training curves, report
    assert len(changed) == 12 + 12 + 2 * 12 + 12 + 1


def test_the_sample_seed_changes_everything_but_the_original_evaluation():
    changed = changed_keys("sampling.seed=1")
    of_the_original = {"Evaluation evaluate original", "BestOfN best-of-N"}  # the best-of-N draws are the original's
    of_the_original |= {
        f"TextScores {s} scores of {m}" for s in ("other", "fluency") for m in ("original", "best-of-N")
    }
    assert set(keys(items_of())) - changed == of_the_original


def test_more_evaluation_runs_keep_the_runs_already_done():
    before, after = items_of(), items_of("evaluate.runs=4")
    for old, new in zip(before, after):
        if type(old) is Evaluation:
            assert [old.run_key(k) for k in range(3)] == [new.run_key(k) for k in range(3)]


@pytest.mark.parametrize(
    "override",
    [
        "reward.batch_size=7",
        "run_dir=/elsewhere",
        "pairs.group_size=8",
        "online.steps=5",
        "iterative.samples=99",
        "policy.trust_remote_code=true",
        "reward.trust_remote_code=true",
    ],
)
def test_settings_nothing_in_the_plan_reads_change_no_key(override):
    assert changed_keys(override) == set()


def test_another_policy_changes_every_key():
    before = keys(items_of())
    after = keys(items_of(original=Original("gpt2-imdb", "v2", "hub:gpt2-imdb@v2")))
    assert all(before[name] != after[name] for name in before)


def test_rloo_models_start_from_the_original_and_are_evaluated():
    items = items_of("online.kl_coefs=[0.02, 0.1]")
    rloo = [i for i in items if type(i) is RlooModel]
    assert [m.name for m in rloo] == ["rloo-kl0.02", "rloo-kl0.1"] and all(m.start is ORIGINAL for m in rloo)
    assert [e.model for e in items if type(e) is Evaluation][-2:] == rloo


def test_plan_command_lists_the_demo_models_and_stages(capsys):
    from prefalign.cli import main

    assert main(["plan", "demo", "--set", "run_dir=/nonexistent/run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # 13 evaluations, the best-of-N reference, the judge's and the fluency model's scores of those 14, and the
    # judge's scores of the 12 training curves (the demo's fluency model scores no curve: along_training false)
    assert lines[0].startswith("plan of 'demo': 71 items, 0 up to date")
    rows = [line.split() for line in lines[3:]]
    assert [row[0] for row in rows] == ["sample"] + ["pairs"] * 3 + ["train"] * 12 + ["evaluate"] * 54 + ["report"]
    assert all(row[1] == ("0/3" if row[3] == "Evaluation" else "todo") for row in rows)
    models = [row[4] for row in rows if row[3] == "DpoModel"]
    assert len(models) == 12 and models[0] == "models/random-sigmoid-beta0.1-seed"


def test_a_clashing_config_exits_2_before_writing_anything(tmp_path, capsys):
    from prefalign.cli import main

    root = tmp_path / "run"
    clash = "train.extra=[{strategy: random, loss: {types: [hinge], name: sigmoid}, beta: 0.1}]"
    assert main(["run", "demo", "--set", f"run_dir={root}", "--set", clash]) == 2
    assert "would both write" in capsys.readouterr().err and not root.exists()


def test_a_run_dir_that_is_a_file_exits_2_naming_it(tmp_path, capsys):
    from prefalign.cli import main

    in_the_way = tmp_path / "results.txt"
    in_the_way.write_text("not a directory")
    assert main(["run", "tiny", "--set", f"run_dir={in_the_way}"]) == 2
    assert str(in_the_way) in capsys.readouterr().err and in_the_way.read_text() == "not a directory"


def test_side_by_side_models_spread_over_gpus_only_when_the_device_names_none():
    from prefalign.pipeline.side_by_side import worker_devices

    assert worker_devices("cuda", None, 5, 2) == [0, 1, 0, 1, 0]  # device: auto / cuda on a 2-GPU machine
    assert worker_devices("cuda", 1, 3, 2) == [1, 1, 1]  # device: cuda:1 stays there
    assert worker_devices("cuda", None, 3, 1) == [None, None, None]
    assert worker_devices("cpu", None, 2, 0) == [None, None]


def test_a_gpu_worker_sees_only_its_gpu_counted_among_the_visible_ones():
    from prefalign.pipeline.side_by_side import visible_gpus

    assert visible_gpus(1, None) == "1"  # every GPU visible: GPU 1 is physical GPU 1
    assert visible_gpus(1, "4,6") == "6"  # CUDA_VISIBLE_DEVICES=4,6: this process's GPU 1 is physical GPU 6
    assert visible_gpus(None, "4,6") is None  # a CPU worker, or the one GPU there is: left alone


def test_trackers_change_no_key():
    assert changed_keys("train.report_to=[tensorboard]") == set()


def test_the_report_baseline_changes_the_report_key_alone():
    from prefalign.pipeline.items import REPORT_VERSION
    from prefalign.pipeline.store import key_of

    # `seed`, the comparison every report made before the setting existed: the keys of earlier runs
    plain = ("baselines.best_of_n=[]", "evaluate.judges=[]", "evaluate.fluency=null", "evaluate.during_training=null")
    report = items_of("report.baseline=seed", *plain)[-1]
    assert report.key == key_of("report", REPORT_VERSION, "demo", [e.key for e in report.evaluations])
    assert changed_keys("report.baseline=seed") == set()
    for other in ("default", "iterative", ""):  # another baseline, or none: only the report is redone
        assert changed_keys(f"report.baseline={other}") == {"Report report"}
    assert items_of("report.baseline=default")[-1].key != items_of("report.baseline=")[-1].key


def test_repeats_train_every_model_once_per_training_seed():
    once = items_of("iterative.rounds=2", "online.kl_coefs=[0.1]")
    twice = items_of("iterative.rounds=2", "online.kl_coefs=[0.1]", "train.repeats=2", "train.seed=3")
    trained = lambda items: [i for i in items if isinstance(i, (DpoModel, RlooModel))]  # noqa: E731
    assert len(trained(twice)) == 2 * len(trained(once))
    # the first repeat keeps the names of a run without repeats; the others end in -seed<s>
    names = {i.name: i for i in trained(twice)}
    for model in trained(once):
        first, second = names[model.name], names[f"{model.name}-seed4"]
        assert (first.seed, second.seed) == (3, 4) and first.group == second.group == model.name
        assert first.key != second.key and second.path.name == second.name
    r2 = names["iter-random-sigmoid-beta0.1-seed-r2-seed4"]
    assert r2.start is names["random-sigmoid-beta0.1-seed-seed4"]  # a repeat's chain starts from that repeat
    assert r2.pairs.path.parent.parent.name == "iter-random-sigmoid-beta0.1-seed-seed4"
    assert len({i.path for i in twice}) == len(twice)
    evaluated = {i.model.name for i in twice if isinstance(i, Evaluation)}
    assert evaluated == {"original", *names}
    # repeats=1 changes nothing
    assert keys(items_of("train.repeats=1")) == keys(items_of())


def test_every_shipped_preset_validates_and_plans():
    from prefalign.config.loader import preset_names

    assert {"tiny", "demo", "frontier", "imdb", "aligned", "headroom"} <= set(preset_names())
    for name in preset_names():
        items = items_of(source=name)
        assert isinstance(items[-1], Report), name
    aligned = items_of(source="aligned")
    challengers = [i for i in aligned if isinstance(i, IterativeRound)]
    assert len(challengers) == 2 * 3 and {i.seed for i in challengers} == {0, 1}  # rounds 2-4, two training seeds
    assert all(i.recipe == "default" and i.pairs.strategy == "best_worst" for i in challengers)


def test_editing_a_local_prompt_corpus_redoes_what_was_sampled_from_it(tmp_path):
    import os

    corpus = tmp_path / "prompts.csv"
    corpus.write_text("text\nA fine film about two brothers.\n")
    prompts = f"sampling.prompts={{corpus: {corpus}}}"
    before = keys(items_of(prompts))
    corpus.write_text("text\nA dull film about nothing at all, really.\n")
    os.utime(corpus, ns=(corpus.stat().st_atime_ns, corpus.stat().st_mtime_ns + 10**9))  # a later edit
    after = keys(items_of(prompts))
    changed = {name for name in before if before[name] != after[name]}
    assert "Samples samples" in changed and "Evaluation evaluate original" in changed
    assert keys(items_of(prompts)) == after  # an unchanged file keeps its keys


def test_a_local_prompt_corpus_that_does_not_exist_is_refused_while_planning(tmp_path):
    from prefalign.data.corpus import CorpusPathError

    with pytest.raises(CorpusPathError, match="sampling.prompts.corpus"):
        items_of(f"sampling.prompts={{corpus: {tmp_path / 'missing.csv'}}}")
    items_of("sampling.prompts={corpus: imdb}")  # a hub dataset id is not looked up while planning


@pytest.mark.parametrize(
    "overrides,too_many,fits,words",
    [
        (("sampling.num_samples=10",), "pairs.count=46", "pairs.count=45", "at most 45 distinct pairs"),
        (
            ("sampling.num_samples=10", "pairs.strategies=[best_worst]"),
            "pairs.count=4",
            "pairs.count=3",
            "blocks of pairs.group_size=4: at most 3",
        ),
        (
            ("sampling.prompts.corpus=rotten_tomatoes", "pairs.count=2"),
            "sampling.prompts.per_prompt=1",
            "sampling.prompts.per_prompt=2",
            "raise sampling.prompts.per_prompt",
        ),
        (
            ("iterative.rounds=2", "iterative.samples=20", "sampling.num_samples=1000"),
            "pairs.count=191",
            "pairs.count=190",
            "iterative.samples=20",
        ),
    ],
)
def test_more_pairs_than_the_samples_allow_are_refused_while_planning(overrides, too_many, fits, words):
    from prefalign.pipeline.plan import PlanError

    with pytest.raises(PlanError, match=words):
        items_of(*overrides, too_many)
    assert items_of(*overrides, fits)
