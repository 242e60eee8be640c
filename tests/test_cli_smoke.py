"""The real CLI on the `tiny` preset, as a user runs it: every output, caching, resume after a kill."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys

import pandas as pd
import pytest
import torch
from helpers import (
    MODELS,
    STRATEGIES,
    in_session,
    kill_after_a_checkpoint,
    prefalign,
    started,
    terminal_sigint,
    wait_until,
)

pytestmark = pytest.mark.slow  # the CLI, most tests on the built tiny models, some building them

BEST_OF = [1, 2, 4, 8]  # the tiny preset's baselines.best_of_n


def test_run_tiny_writes_every_output(tiny_run):
    root, _ = tiny_run
    samples = pd.read_parquet(root / "samples.parquet")
    assert len(samples) == 400
    assert {"text", "reward", "positive_prob", "n_tokens"} <= set(samples.columns)
    for s in STRATEGIES:
        pairs = pd.read_parquet(root / "pairs" / f"{s}.parquet")
        assert len(pairs) == 200
        assert {"prompt", "chosen", "rejected", "chosen_reward", "rejected_reward"} <= set(pairs.columns)
        assert (pairs.chosen_reward > pairs.rejected_reward).all()
        assert (pairs.prompt == "<|endoftext|>").all()
    for m in MODELS:
        d = root / "models" / m
        assert (d / "model.safetensors").exists() and (d / "config.json").exists() and (d / "tokenizer.json").exists()
        assert json.loads((d / "train.json").read_text())["pairs"] == 200
    results = pd.read_csv(root / "results.csv")
    assert list(results.columns[:13]) == [  # the describing columns, the run, the metrics
        "model",
        "group",
        "method",
        "strategy",
        "loss",
        "beta",
        "recipe",
        "round",
        "kl_coef",
        "training_seed",
        "best_of",
        "run",
        "reward_mean",
    ]
    assert (results.group == results.model).all()  # one training seed: each model is its own group
    assert set(results[results.method.isin(["dpo", "iterative", "rloo"])].training_seed) == {0}
    assert {
        "diversity",
        "positive_rate",
        "distinct_1",
        "distinct_2",
        "kl_seq",
        "kl_token",
        "share_above_0",
        "share_above_0.5",
        "reward_p05",
        "reward_p95",
        "mean_tokens",
        "broken_share",
    } <= set(results.columns)
    assert len(results) == (1 + len(MODELS) + len(BEST_OF)) * 2
    assert {f"judge_other_{m}" for m in ("reward_mean", "reward_std", "positive_rate")} <= set(results.columns)
    assert {"fluency", "fluency_low_share"} <= set(results.columns)
    best = results[results.method == "best_of_n"]
    results = results[results.method != "best_of_n"]  # the rows of models, each with its texts in eval/<model>/
    assert sorted(set(best.best_of)) == BEST_OF and results.best_of.isna().all()
    for row in results.itertuples():  # each run's rates are those of its own texts
        texts = pd.read_parquet(root / "eval" / row.model / f"run-{row.run:02d}.parquet")
        assert row.positive_rate == pytest.approx(texts.is_positive.mean())
        assert row.broken_share == pytest.approx(texts.text.str.contains("\ufffd").mean())
    original = results[results.model == "original"]
    assert original.strategy.isna().all() and original.loss.isna().all() and original.beta.isna().all()
    assert results.diversity.between(0.1, 10).all()
    assert (original.kl_seq == 0).all() and (results[results.model != "original"].kl_seq != 0).all()
    # Each run's timing by phase is kept with it, and is no metric of the results.
    trained_run = json.loads((root / "eval" / MODELS[0] / "run-00.json").read_text())
    assert set(trained_run["phase_seconds"]) == {"decode", "texts", "kl", "score", "write"}
    assert "phase_seconds" not in results.columns
    assert set(json.loads((root / "samples.meta.json").read_text())["phase_seconds"]) == {
        "decode",
        "texts",
        "score",
        "write",
    }
    report = (root / "report.md").read_text()
    for s in STRATEGIES:
        assert f"plots/rewards-{s}.png" in report and (root / "plots" / f"rewards-{s}.png").stat().st_size > 5000
        assert f"plots/training-{s}.png" in report and (root / "plots" / f"training-{s}.png").stat().st_size > 5000
    assert (
        "| original model |" in report and "| sigmoid 0.1 (default) |" in report and "| hinge 0.1 (default) |" in report
    )
    assert "overrides `learning_rate: 0.001`, `logging_steps: 5`\n- prompts: BOS token only" in report  # as written
    original_share = results[results.model == "original"].broken_share.mean()
    assert " mean length | broken texts |" in report and f"| {100 * original_share:.1f}% |" in report
    assert "Pareto-optimal" in report and (root / "plots" / "frontier-reward-vs-kl.png").stat().st_size > 5000
    assert "Per-run numbers: [results.csv](results.csv)." in report
    for m in MODELS:  # each model's card, written by its training: what trained it (the report has its evaluation)
        card = (root / "models" / m / "README.md").read_text()
        assert f"loss `{m.split('-')[1]}`, beta 0.1" in card and "200 chosen/rejected pairs by the" in card
        assert card.startswith('---\nlibrary_name: transformers\nbase_model: "prefalign:tiny"')
        assert "`report.md` and `results.csv`" in card and "| mean reward |" not in card
    page = (root / "report.html").read_text()  # self-contained: every plot embedded, nothing fetched
    # rewards and training per strategy, two frontiers, the training trajectories, the judges
    assert page.count('<img src="data:image/png;base64,') == 2 * len(STRATEGIES) + 5 and 'src="plots/' not in page
    assert "<script" not in page and "http" not in page.split("<h2>Provenance</h2>")[0].split("</style>")[1]
    assert "Resolved config" in page and f"<td>trl</td><td>{__import__('trl').__version__}</td>" in page
    models = json.loads((root / "models.json").read_text())
    assert "accuracy" in models["reward_model"] and "perplexity" in models["policy"]
    assert not list(root.rglob(".*tmp*"))


def outputs(root) -> dict:
    """Every output file under a run dir with its modification time (provenance, rewritten each run, left out)."""
    skip = ("config.yaml", "models.json", ".finished.json", ".lock")
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and p.name not in skip}


def own_copy(tiny_run, tmp_path, cli):
    """A copy of the session's tiny run in `tmp_path`, for a test that runs commands in it (the session's
    run stays as `prefalign run tiny` left it, whatever the order of the tests). Run once there, so its
    provenance names the copy's run_dir: the copy is then a finished run of its own."""
    import shutil

    root = tmp_path / "run"
    shutil.copytree(tiny_run[0], root)
    cli("run", "tiny", "--set", f"run_dir={root}")
    return root


def test_second_run_does_no_work(tiny_run, tmp_path, cli):
    root = own_copy(tiny_run, tmp_path, cli)
    (root / ".lock").unlink()
    before = outputs(root)
    provenance = {p: p.stat().st_mtime_ns for p in (root / "config.yaml", root / "models.json")}
    cli("run", "tiny", "--set", f"run_dir={root}")
    assert outputs(root) == before
    # Nothing to do, nothing written, not even the lock: a finished run on a read-only disk still reports.
    assert not (root / ".lock").exists()
    assert {p: p.stat().st_mtime_ns for p in provenance} == provenance
    # every item of the plan is current: 1 samples + 3 pair files + the models + their evaluations + the
    # best-of-N reference + the judge's and fluency model's scores of those evaluations and of the models'
    # training curves + the report
    plan = cli("plan", "tiny", "--set", f"run_dir={root}").stdout
    items = 1 + 3 + len(MODELS) + (1 + len(MODELS)) + 1 + 2 * (1 + len(MODELS) + 1) + 2 * len(MODELS) + 1
    assert f"{items} items, {items} up to date" in plan


def test_changing_a_setting_redoes_only_what_depends_on_it(tiny_run, tmp_path, cli):
    root = own_copy(tiny_run, tmp_path, cli)
    before = outputs(root)
    plan = cli("plan", "tiny", "--set", f"run_dir={root}", "--set", "evaluate.runs=3").stdout
    assert plan.count(" 2/3 ") == 1 + len(MODELS)  # the two runs already done are kept
    cli("run", "tiny", "--set", f"run_dir={root}", "--set", "evaluate.runs=3")
    after = outputs(root)
    changed = {p.relative_to(root).as_posix() for p in before if after[p] != before[p]}
    added = {p.relative_to(root).as_posix() for p in set(after) - set(before)}
    # only a third evaluation run per model, of the best-of-N reference, their judge's and fluency
    # model's scores, and the report that reads them
    evaluated = ["original", *MODELS, "best-of-n"]
    assert added == (
        {f"eval/{m}/run-02.{ext}" for m in ["original", *MODELS] for ext in ("json", "parquet")}
        | {f"eval/best-of-n/run-02{end}" for end in (".json", "-choices.parquet", "-pool.parquet", "-pool.json")}
        | {
            f"eval/{m}/{s}/run-02.{ext}"
            for m in evaluated
            for s in ("judge-other", "fluency")
            for ext in ("json", "parquet")
        }
    )
    assert "results.csv" in changed
    assert all(
        p in ("results.csv", "summary.csv", "report.md", "report.html", "report.meta.json") or p.startswith("plots/")
        for p in changed
    ), changed
    assert len(pd.read_csv(root / "results.csv")) == (1 + len(MODELS) + len(BEST_OF)) * 3


def test_killed_mid_training_resumes_and_completes(tiny_dir, tmp_path, cli):
    root = tmp_path / "run"
    cmd = [sys.executable, "-m", "prefalign.cli", "run", "tiny", "--set", f"run_dir={root}"]
    with started(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as proc:
        # Killed at the third model's first logged training step (the log is flushed line by line), so
        # mid-training however fast this machine trains.
        training_third = False
        for line in proc.stdout:
            training_third = training_third or line.rstrip().endswith(f"train {MODELS[2]}")
            if training_third and "step " in line:
                break
        proc.send_signal(signal.SIGKILL)
        proc.stdout.close()
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL
    assert not (root / "models" / MODELS[2] / "train.json").exists()
    first_two = {m: (root / "models" / m / "model.safetensors").stat().st_mtime_ns for m in MODELS[:2]}
    cli("run", "tiny", "--set", f"run_dir={root}")
    # the two finished models are kept, the others trained
    assert {m: (root / "models" / m / "model.safetensors").stat().st_mtime_ns for m in MODELS[:2]} == first_two
    assert all((root / "models" / m / "train.json").exists() for m in MODELS)
    assert len(pd.read_csv(root / "results.csv")) == (1 + len(MODELS) + len(BEST_OF)) * 2
    assert not list(root.rglob(".*tmp*"))


def test_single_stage_command_stops_after_that_stage(tiny_dir, tmp_path, cli):
    root = tmp_path / "run"
    cli("pairs", "tiny", "--set", f"run_dir={root}")
    assert (root / "pairs" / "threshold.parquet").exists() and not (root / "models").exists()


def test_impossible_pairs_exit_1_with_the_reason(tiny_dir, tmp_path, cli):
    proc = cli("pairs", "tiny", "--set", f"run_dir={tmp_path / 'run'}", "--set", "pairs.threshold=100", check=False)
    assert proc.returncode == 1
    assert "threshold: cannot build any pair" in proc.stderr and "Traceback" not in proc.stderr


def test_a_missing_local_model_path_is_no_such_directory_before_any_work(tiny_dir, tmp_path, monkeypatch, cli):
    root = tmp_path / "run"
    monkeypatch.chdir(tmp_path)  # the relative paths below are relative to it
    for ref in ["/nonexistent/prefalign-model", "./no-such-model-dir", "~/no-such-model-dir"]:
        proc = cli("sample", "tiny", "--set", f"run_dir={root}", "--set", f"policy.model={ref}", check=False)
        assert proc.returncode == 2, proc.stderr
        assert "policy.model" in proc.stderr and "no such directory" in proc.stderr and ref in proc.stderr
        assert "hub" not in proc.stderr.split("(")[0] and "Traceback" not in proc.stderr
        assert not root.exists()  # found while planning: nothing written
    (tmp_path / "weights.bin").write_text("x")
    proc = cli("plan", "tiny", "--set", "reward.model=./weights.bin", check=False)
    assert proc.returncode == 2 and "reward.model" in proc.stderr and "is a file" in proc.stderr
    proc = cli(
        "sample", "tiny", "--set", f"run_dir={root}", "--set", "sampling.prompts={corpus: ./no-such.csv}", check=False
    )
    assert proc.returncode == 2 and "sampling.prompts.corpus" in proc.stderr and "./no-such.csv" in proc.stderr
    (tmp_path / "reviews.docx").write_text("x")
    proc = cli(
        "run",
        "tiny",
        "--set",
        f"run_dir={root}",
        "--set",
        f"sampling.prompts={{corpus: {tmp_path / 'reviews.docx'}}}",
        check=False,
    )
    assert proc.returncode == 2 and "sampling.prompts.corpus" in proc.stderr and "'.docx'" in proc.stderr
    proc = cli(
        "run",
        "tiny",
        "--set",
        f"run_dir={root}",
        "--set",
        f"reward.model={tiny_dir / 'reward'}",
        "--set",
        "reward.positive_label=pos",
        check=False,
    )
    assert proc.returncode == 2 and "'pos' is not a label" in proc.stderr and "Traceback" not in proc.stderr
    assert not root.exists()


def test_a_training_killed_mid_way_resumes_from_its_checkpoint_to_the_same_weights(tiny_run, tmp_path, cli):
    from safetensors.torch import load_file

    serial_root, _ = tiny_run
    root = tmp_path / "run"
    cli("pairs", "tiny", "--set", f"run_dir={root}", "--set", "pairs.strategies=[random]")
    train = [
        "train",
        "tiny",
        "--set",
        f"run_dir={root}",
        "--set",
        "train.checkpoint_steps=5",
        "--set",
        "pairs.strategies=[random]",
    ]
    checkpoints = root / "models" / f".{MODELS[0]}.checkpoints"
    kill_after_a_checkpoint(train, checkpoints)
    assert not (root / "models" / MODELS[0] / "train.json").exists()  # killed mid-training
    cli(*train)
    info = json.loads((root / "models" / MODELS[0] / "train.json").read_text())
    assert info["resumed_from"].startswith("checkpoint-") and not checkpoints.exists()
    for name in MODELS[:2]:  # the resumed model and the other: the serial run's weights (its key is the same)
        ours, theirs = (load_file(r / "models" / name / "model.safetensors") for r in (root, serial_root))
        assert max((ours[t] - theirs[t]).abs().max().item() for t in ours) < 5e-4, name


def test_a_failed_run_leaves_the_provenance_of_the_last_good_one(tiny_run, tmp_path, cli):
    import shutil

    import yaml

    root = tmp_path / "run"
    shutil.copytree(tiny_run[0], root)
    before = (root / "config.yaml").read_text(), (root / "models.json").read_text()
    files = outputs(root)
    # Another config whose outputs would replace this one's: refused before any work, naming the key.
    proc = cli("run", "tiny", "--set", f"run_dir={root}", "--set", "pairs.threshold=100", check=False)
    assert proc.returncode == 2 and "pairs.threshold (0.0 there, 100.0 here)" in proc.stderr
    assert "pairs threshold" in proc.stderr and "--update" in proc.stderr and outputs(root) == files
    # Asked to update, with new samples (those on disk would refuse the threshold before any work), it
    # redoes what depends on the changed keys, which fails: the provenance stays the old run's.
    again = ("--set", "sampling.seed=1", "--set", "pairs.threshold=100", "--update")
    proc = cli("run", "tiny", "--set", f"run_dir={root}", *again, check=False)
    assert proc.returncode == 1 and "cannot build any pair" in proc.stderr
    assert ((root / "config.yaml").read_text(), (root / "models.json").read_text()) == before
    assert yaml.safe_load(before[0])["pairs"]["threshold"] == 0.0  # what results.csv was made with
    files = outputs(root)  # the failed run's samples replaced the old ones; the old run's pairs are still there
    # Its config.yaml damaged (not UTF-8): still refused, without claiming which keys differ.
    (root / "config.yaml").write_bytes(b"\xff\xfe")
    proc = cli("run", "tiny", "--set", f"run_dir={root}", "--set", "pairs.threshold=100", check=False)
    assert (
        proc.returncode == 2 and "config.yaml is missing or unreadable" in proc.stderr and "there," not in proc.stderr
    )
    assert "Traceback" not in proc.stderr and outputs(root) == files


def test_ctrl_c_during_training_exits_130_with_a_line_and_the_rerun_completes(tiny_dir, tmp_path, cli):
    root = tmp_path / "run"
    cli("pairs", "tiny", "--set", f"run_dir={root}", "--set", "pairs.strategies=[random]")
    train = [
        "train",
        "tiny",
        "--set",
        f"run_dir={root}",
        "--set",
        "train.checkpoint_steps=5",
        "--set",
        "pairs.strategies=[random]",
    ]
    cmd = [sys.executable, "-m", "prefalign.cli", *train]
    with started(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=terminal_sigint) as proc:
        checkpoints = root / "models" / f".{MODELS[0]}.checkpoints"

        def checkpointed():
            assert proc.poll() is None, "training finished before it could be interrupted"
            return list(checkpoints.glob("checkpoint-*/trainer_state.json"))

        wait_until(checkpointed, timeout=300, what=f"a checkpoint under {checkpoints}")
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "rerun the same command" in err and "Traceback" not in err
    cli(*train)
    assert all((root / "models" / name / "train.json").exists() for name in MODELS[:2])


@pytest.mark.parametrize(
    "processes,stop",
    [
        (["--set", "train.side_by_side=2"], "ctrl-c"),
        (["--num-processes", "2"], "ctrl-c"),
        (["--set", "train.side_by_side=2"], "kill"),
        (["--num-processes", "2"], "kill"),
    ],
    ids=["side-by-side-ctrl-c", "two-processes-ctrl-c", "side-by-side-kill", "two-processes-kill"],
)
def test_stopping_several_processes_says_so_once_and_leaves_none_running(tiny_dir, tmp_path, processes, stop):
    """Ctrl-C (SIGINT to the terminal's process group): exit 130. `kill PID` (SIGTERM to the run's
    process alone, as schedulers send at a time limit): exit 143, its workers ending with it
    (distributed.exit_with_parent: they get no signal), as after a SIGKILL."""
    log = tmp_path / "run.log"
    args = ["run", "tiny", "--set", f"run_dir={tmp_path / 'run'}", "--set", "train.dpo.num_train_epochs=20", *processes]
    cmd = [sys.executable, "-m", "prefalign.cli", *args]
    with open(log, "w") as out, started(cmd, stdout=out, stderr=subprocess.STDOUT, preexec_fn=terminal_sigint) as proc:

        def training():
            assert proc.poll() is None, log.read_text()[-2000:]
            return "step 20/" in log.read_text()

        wait_until(training, timeout=300, what="step 20 in the run's log")
        if stop == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        else:
            os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == (130 if stop == "ctrl-c" else 143)
        # Nothing of the run runs (its workers end with it), so nothing can write to the log any more.
        wait_until(lambda: not in_session(proc.pid), timeout=60, what="the run's workers to end")
    text = log.read_text()
    said = "prefalign: interrupted; " if stop == "ctrl-c" else "prefalign: terminated (SIGTERM); "
    assert text.count(said + "finished outputs are kept, rerun the same command to resume") == 1, text[-2000:]
    assert "Traceback" not in text and "leaked semaphore" not in text


def test_a_run_in_this_process_leaves_its_sigterm_handler_as_it_was(tiny_dir, tmp_path, cli):
    """prefalign's SIGTERM handler (exit 143 with the resume line) is the run command's only."""
    before = signal.getsignal(signal.SIGTERM)
    cli("pairs", "tiny", "--set", f"run_dir={tmp_path / 'run'}", "--set", "pairs.strategies=[random]")
    assert signal.getsignal(signal.SIGTERM) is before


def test_debug_shows_the_traceback_behind_a_user_error(tmp_path, monkeypatch, cli):
    bad = ["sample", "tiny", "--set", f"run_dir={tmp_path / 'run'}", "--set", "policy.model=/nonexistent/model"]
    proc = cli("--debug", *bad, check=False)
    assert proc.returncode == 2 and "Traceback" in proc.stderr and "ModelPathError" in proc.stderr
    monkeypatch.setenv("PREFALIGN_DEBUG", "1")
    proc = cli(*bad, check=False)
    assert "Traceback" in proc.stderr and "no such directory" in proc.stderr


def test_models_trained_side_by_side_match_the_serial_run(tiny_run, tmp_path, cli):
    """`train.side_by_side: 2` trains grid models in worker processes, to the same weights."""
    from safetensors.torch import load_file

    serial_root, _ = tiny_run
    root = tmp_path / "run"
    cli(
        "train",
        "tiny",
        "--set",
        f"run_dir={root}",
        "--set",
        "train.side_by_side=2",
        "--set",
        "pairs.strategies=[margin]",
    )
    for name in MODELS[2:4]:  # the margin models
        info = json.loads((root / "models" / name / "train.json").read_text())
        assert info["key"] == json.loads((serial_root / "models" / name / "train.json").read_text())["key"]
        ours, theirs = (load_file(r / "models" / name / "model.safetensors") for r in (root, serial_root))
        for tensor in ours:
            diff = (ours[tensor] - theirs[tensor]).abs().max().item()
            # Float rounding (1 CPU thread each instead of 2): ~5e-5 here, where training moves weights by ~1e-2.
            assert diff < 5e-4, (name, tensor, diff)
    plan = cli("plan", "tiny", "--set", f"run_dir={root}", "--set", "pairs.strategies=[margin]").stdout
    assert sum(" DpoModel " in line and " done " in line for line in plan.splitlines()) == 2


def test_help_lists_the_stages():
    out = prefalign("--help").stdout
    for stage in ("run", "sample", "pairs", "train", "evaluate", "report"):
        assert stage in out
    assert "--set" in prefalign("run", "--help").stdout


def test_a_one_output_classifier_is_refused_unless_its_logit_is_declared_the_reward(tiny_dir, tmp_path, cli):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    two = AutoModelForSequenceClassification.from_pretrained(tiny_dir / "reward")
    config = two.config
    config.num_labels, config.id2label, config.label2id = 1, {0: "LABEL_0"}, {"LABEL_0": 0}
    config.problem_type = "regression"  # a one-output reward head, as reward models have
    one = type(two)(config)
    (
        one.save_pretrained(tmp_path / "one"),
        AutoTokenizer.from_pretrained(tiny_dir / "reward").save_pretrained(tmp_path / "one"),
    )
    base = ["sample", "tiny", "--set", f"reward.model={tmp_path / 'one'}", "--set", "reward.positive_label=LABEL_0"]
    proc = cli(*base, "--set", f"run_dir={tmp_path / 'refused'}", check=False)
    assert proc.returncode == 2 and "single output" in proc.stderr and "reward.single_logit" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "refused").exists()  # found while planning
    cli(*base, "--set", f"run_dir={tmp_path / 'run'}", "--set", "reward.single_logit=true")
    samples = pd.read_parquet(tmp_path / "run" / "samples.parquet")
    assert ((samples.reward > 0) == samples.is_positive).all() and samples.reward.std() > 0
    assert ((1 / (1 + (-samples.reward).map(math.exp)) - samples.positive_prob).abs() < 1e-5).all()


def test_corpus_problems_are_messages_not_tracebacks(tiny_dir, tmp_path, cli):
    (tmp_path / "latin1.csv").write_bytes("text\nfine\nthe caf\u00e9 scene\n".encode("latin-1"))
    proc = cli(
        "sample",
        "tiny",
        "--set",
        f"run_dir={tmp_path / 'run'}",
        "--set",
        f"sampling.prompts={{corpus: {tmp_path / 'latin1.csv'}}}",
        check=False,
    )
    assert proc.returncode == 1 and "line 3" in proc.stderr and "UTF-8" in proc.stderr
    assert "Traceback" not in proc.stderr
    (tmp_path / "few.csv").write_text("text,label\n" + "".join(f"film {i},{i % 2}\n" for i in range(20)))
    proc = cli("build-demo", "tiny", "--corpus", str(tmp_path / "few.csv"), check=False)
    assert proc.returncode == 1 and "at least 200" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("build-demo", "tiny", "--corpus", str(tmp_path / "few.csv"), "--subset", "sst2", check=False)
    assert proc.returncode == 1 and "has no subsets" in proc.stderr and "Traceback" not in proc.stderr


def test_a_full_disk_is_a_message_naming_the_file(tiny_dir, tmp_path, monkeypatch, capsys):
    import errno

    import prefalign.stages.sample as sample_stage
    from prefalign.cli import main

    target = tmp_path / "run" / "samples.meta.json"

    def full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(sample_stage, "write_json", full)
    assert main(["sample", "tiny", "--set", f"run_dir={tmp_path / 'run'}"]) == 1
    err = capsys.readouterr().err
    assert "disk is full" in err and str(target) in err and "rerun the same command" in err


def test_a_config_that_is_not_text_and_a_model_dir_that_is_empty_are_named(tiny_dir, tmp_path, cli):
    (tmp_path / "junk.yaml").write_bytes(b"name: x\n\x8e\x01\xff")
    proc = cli("run", str(tmp_path / "junk.yaml"), check=False)
    assert proc.returncode == 2 and "junk.yaml, line 2" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = cli("plan", "tiny", "--set", f"reward.model={tmp_path / 'empty'}", check=False)
    assert proc.returncode == 2 and "reward.model" in proc.stderr and "no config.json" in proc.stderr


@pytest.mark.parametrize("raised", ["OSError", "SafetensorError"])
def test_a_disk_full_while_saving_a_model_says_how_much_room_it_needs(tiny_dir, tmp_path, monkeypatch, cli, raised):
    """As Python raises it, and as safetensors' Rust writer does on a full disk ("... (os error 28)")."""
    import errno

    import transformers.modeling_utils
    from safetensors import SafetensorError

    def full(tensors, filename, metadata=None):
        if raised == "SafetensorError":
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full)
    root = tmp_path / "run"
    proc = cli(
        "train",
        "tiny",
        "--set",
        f"run_dir={root}",
        "--set",
        "pairs.strategies=[random]",
        "--set",
        "train.losses=[sigmoid]",
        check=False,
    )
    assert proc.returncode == 1 and "disk is full" in proc.stderr and "Traceback" not in proc.stderr
    assert ("model.safetensors" if raised == "OSError" else "cannot save a model's weights") in proc.stderr
    assert "MiB" in proc.stderr
    assert not (root / "models" / MODELS[0]).exists() and not list(root.rglob(".*tmp*"))  # nothing half-written


def test_a_read_only_run_directory_still_reports_and_more_work_is_a_message(tiny_run, tmp_path, monkeypatch, cli):
    import errno
    import shutil

    import prefalign.pipeline.store as store

    root = tmp_path / "run"
    shutil.copytree(tiny_run[0], root)
    cli("report", "tiny", "--set", f"run_dir={root}", "--set", "evaluate.runs=2", "--update")  # finished, as it stands

    def read_only(src, dst):
        raise OSError(errno.EROFS, "Read-only file system", str(dst))

    monkeypatch.setattr(store.os, "replace", read_only)  # every output is renamed into place: none can be
    proc = cli("report", "tiny", "--set", f"run_dir={root}", "--set", "evaluate.runs=2")
    assert "up to date" in proc.stdout
    proc = cli("run", "tiny", "--set", f"run_dir={root}", "--set", "evaluate.runs=4", check=False)
    assert proc.returncode == 1 and "read-only" in proc.stderr and "run-0" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_compare_puts_two_runs_in_one_table_and_plot(tiny_run, tmp_path, cli):
    import shutil

    first = tmp_path / "first"
    shutil.copytree(tiny_run[0], first)
    second = tmp_path / "second"
    shutil.copytree(tiny_run[0], second)
    out = tmp_path / "cmp"
    cli("compare", str(first), str(second), "--out", str(out))
    text = (out / "compare.md").read_text()
    for run in ("first", "second"):
        assert f"| {run}/original |" in text and all(f"| {run}/{m} |" in text for m in MODELS)
    page = (out / "compare.html").read_text()
    assert page.count('<img src="data:image/png;base64,') == 2 and "<script" not in page
    assert "not on one scale" not in text  # one classifier: rewards compare across the runs
    config = (second / "config.yaml").read_text()
    (second / "config.yaml").write_text(config.replace("positive_label: POSITIVE", "positive_label: NEGATIVE"))
    cli("compare", str(first), str(second), "--out", str(out))
    assert "not on one scale" in (out / "compare.md").read_text()
    proc = cli("compare", str(first), str(tmp_path / "none"), "--out", str(out), check=False)
    assert proc.returncode == 2 and "none has no results.csv" in proc.stderr and "Traceback" not in proc.stderr
    (second / "config.yaml").write_text("reward: [unclosed")  # a run's config edited by hand into broken YAML
    proc = cli("compare", str(first), str(second), "--out", str(out), check=False)
    assert (
        proc.returncode == 2 and "config.yaml cannot be read as YAML" in proc.stderr and "Traceback" not in proc.stderr
    )
    proc = cli("compare", str(first), "--out", str(first / "results.csv"), check=False)  # a file as --out
    assert proc.returncode == 2 and "is a file, not a directory" in proc.stderr and "Traceback" not in proc.stderr


def test_repeats_report_the_mean_and_std_across_training_seeds(tiny_run, tmp_path, cli):
    import shutil

    import numpy as np

    root = tmp_path / "run"
    shutil.copytree(tiny_run[0], root)
    before = {m: (root / "models" / m / "model.safetensors").stat().st_mtime_ns for m in MODELS}
    cli(
        "run",
        "tiny",
        "--set",
        f"run_dir={root}",
        "--set",
        "train.repeats=2",
        "--set",
        "pairs.strategies=[random]",
        "--update",
    )
    groups = [m for m in MODELS if m.startswith("random-")]
    for m in groups:  # the first seed's models are the tiny run's, kept; the second seed's are new
        assert (root / "models" / m / "model.safetensors").stat().st_mtime_ns == before[m]
        assert json.loads((root / "models" / f"{m}-seed1" / "train.json").read_text())["settings"]["seed"] == 1
    results = pd.read_csv(root / "results.csv")
    assert set(results.training_seed.dropna()) == {0, 1}
    summary = pd.read_csv(root / "summary.csv").set_index("model")
    report = (root / "report.md").read_text()
    for m in groups:
        seeds = results[results.group == m].groupby("training_seed").reward_mean.mean()
        assert len(seeds) == 2 and seeds[0] != seeds[1]  # another data order, another model
        row = summary.loc[m]
        assert row.seeds == 2 and row.reward_mean == pytest.approx(seeds.mean())
        assert row.reward_mean_sd == pytest.approx(np.std(seeds, ddof=1))
        loss, beta = m.split("-")[1], 0.1
        assert f"| {loss} {beta:g} (default) | {seeds.mean():.3f} ({np.std(seeds, ddof=1):.3f}) |" in report
    assert not any(name.endswith("-seed1") for name in summary.index)  # one row per model group


@pytest.mark.skipif(
    torch.cuda.is_available() or torch.backends.mps.is_available(), reason="needs a machine without a GPU"
)
@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_a_device_the_machine_lacks_exits_2_before_any_work(tmp_path, cli, device):
    proc = cli("sample", "tiny", "--set", f"run_dir={tmp_path / 'run'}", "--set", f"device={device}", check=False)
    assert proc.returncode == 2 and f"device: {device} was asked for" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_a_model_cache_that_cannot_be_created_is_a_message(tmp_path, monkeypatch, cli):
    (tmp_path / "a-file").write_text("x")
    monkeypatch.setenv("PREFALIGN_CACHE", str(tmp_path / "a-file"))  # a file where the cache folder would go
    for args in (["build-demo", "tiny"], ["sample", "tiny", "--set", f"run_dir={tmp_path / 'run'}"]):
        proc = cli(*args, check=False)
        assert proc.returncode == 1 and "model cache" in proc.stderr and "PREFALIGN_CACHE" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def test_ctrl_c_while_building_the_demo_models_exits_130_with_a_line(tmp_path):
    log = tmp_path / "build.log"
    cmd = [sys.executable, "-m", "prefalign.cli", "build-demo", "tiny"]
    env = {**os.environ, "PREFALIGN_CACHE": str(tmp_path / "cache")}
    with (
        open(log, "w") as out,
        started(cmd, stdout=out, stderr=subprocess.STDOUT, preexec_fn=terminal_sigint, env=env) as proc,
    ):

        def building():
            assert proc.poll() is None, log.read_text()[-2000:]
            return "building prefalign:tiny" in log.read_text()

        wait_until(building, timeout=120, what="the build's first line")
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    text = log.read_text()
    assert "prefalign: interrupted;" in text and "Traceback" not in text
    assert not list((tmp_path / "cache" / "models").glob("tiny-*/info.json"))  # no half-built model set in use


def test_a_damaged_output_is_named_and_made_again_once_deleted(tiny_run, tmp_path, cli):
    import shutil

    root = tmp_path / "run"
    shutil.copytree(tiny_run[0], root)
    samples = root / "samples.parquet"
    samples.write_bytes(samples.read_bytes()[:100])  # damaged after it was written (disk, hand)
    shutil.rmtree(root / "pairs")  # so that the pair rules read the samples again
    proc = cli("run", "tiny", "--set", f"run_dir={root}", check=False)
    assert proc.returncode == 1 and f"{samples} cannot be read" in proc.stderr and "Traceback" not in proc.stderr
    models = {p: p.stat().st_mtime_ns for p in (root / "models").rglob("model.safetensors")}
    samples.unlink()  # as the message says
    cli("run", "tiny", "--set", f"run_dir={root}")
    assert pd.read_parquet(samples).equals(pd.read_parquet(tiny_run[0] / "samples.parquet"))
    assert {p: p.stat().st_mtime_ns for p in (root / "models").rglob("model.safetensors")} == models
    # An evaluation run whose texts are gone is made again, as its metrics would be.
    run_file = root / "eval" / "original" / "run-01.parquet"
    run_file.unlink()
    assert re.search(r"evaluate\s+1/2\s.*eval/original ", cli("plan", "tiny", "--set", f"run_dir={root}").stdout)
    cli("run", "tiny", "--set", f"run_dir={root}")
    assert pd.read_parquet(run_file).equals(pd.read_parquet(tiny_run[0] / "eval" / "original" / "run-01.parquet"))


@pytest.mark.parametrize("failure", ["cpu", "cuda"])
def test_running_out_of_memory_is_one_line_naming_the_batch_sizes(tiny_dir, tmp_path, cli, monkeypatch, failure):
    from prefalign.pipeline import runner
    from prefalign.pipeline.items import Pairs

    def out_of_memory(item, services):
        if failure == "cpu":
            torch.empty(10**14)  # ~400 TB: the CPU allocator refuses it at once
        raise torch.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of "
            "79.19 GiB of which 1.06 GiB is free."
        )

    monkeypatch.setitem(runner.STAGES, Pairs, out_of_memory)
    proc = cli("run", "tiny", "--set", f"run_dir={tmp_path / 'run'}", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "ran out of memory" in proc.stderr and "sampling.batch_size" in proc.stderr
    assert ("can't allocate memory" if failure == "cpu" else "CUDA out of memory") in proc.stderr
    assert (tmp_path / "run" / "samples.parquet").exists()  # the stage before it is kept for the rerun
