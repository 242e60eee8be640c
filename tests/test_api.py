"""The Python API (prefalign/api.py): the same configs, plans, runs and messages as the CLI, and a run's outputs
through its handle."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import MODELS

import prefalign
from prefalign.config.loader import ConfigError

TINY = Path(prefalign.__file__).parent / "presets" / "tiny.yaml"


def raised(call) -> BaseException:
    """The exception `call()` raised, whatever its kind (a SystemExit too, which `pytest.raises(Exception)` lets through)."""
    try:
        call()
    except BaseException as e:  # noqa: B036 - the point is to see SystemExit as well
        return e
    raise AssertionError("no exception")


def test_api_run_gives_the_cli_runs_results(tiny_run, tmp_path):
    """`prefalign.run` in this process and `prefalign run tiny` in another: the same seeds, the same numbers.
    results.csv and summary.csv hold model settings and metrics only (no timings or paths), so every column
    must match."""
    cli_root, _ = tiny_run
    run = prefalign.run(prefalign.load_config("tiny", {"run_dir": str(tmp_path / "api")}))
    assert run.path == tmp_path / "api" and run.config.name == "tiny"
    pd.testing.assert_frame_equal(run.results, pd.read_csv(cli_root / "results.csv"))
    pd.testing.assert_frame_equal(run.summary, pd.read_csv(cli_root / "summary.csv"))
    assert run.report_md.is_file() and run.report_html.is_file() and any(run.plots.glob("*.png"))


def test_the_handle_reads_a_finished_runs_outputs(tiny_run):
    root, _ = tiny_run
    run = prefalign.open_run(root)
    assert run.config == prefalign.load_config("tiny", {"run_dir": str(root)})
    assert run.models == ["original", *MODELS]
    assert run.models == list(run.summary.model[run.summary.method != "best_of_n"])
    pd.testing.assert_frame_equal(run.samples(), pd.read_parquet(root / "samples.parquet"))
    texts = run.texts(MODELS[3], run=1)
    pd.testing.assert_frame_equal(texts, pd.read_parquet(root / "eval" / MODELS[3] / "run-01.parquet"))
    assert len(texts) == run.config.evaluate.samples and {"text", "reward"} <= set(texts.columns)
    assert run.model_dir(MODELS[0]) == root / "models" / MODELS[0]
    assert (run.model_dir(MODELS[0]) / "model.safetensors").is_file()
    assert (run.report_md, run.report_html, run.plots) == (root / "report.md", root / "report.html", root / "plots")


def test_the_handle_names_the_models_there_are(tiny_run):
    run = prefalign.open_run(tiny_run[0])
    for call, said in [
        (lambda: run.texts("nope"), f"no model 'nope' in this run; its models: original, {MODELS[0]}"),
        (lambda: run.model_dir("nope"), "no model 'nope'"),
        (
            lambda: run.model_dir("original"),
            "'original' is not trained by the run: its weights are policy.model (prefalign:tiny)",
        ),
        (lambda: run.samples(MODELS[0]), "no samples were drawn from"),
        (lambda: run.texts("original", 2), "'original' has evaluation runs 0 to 1"),
    ]:
        e = raised(call)
        assert isinstance(e, prefalign.PrefalignError) and e.exit_code == 2 and said in str(e), e


def test_an_iterative_rounds_samples_and_a_moved_run_directory(tmp_path):
    """The samples a round drew from its parent model, found where the directory is now (its config.yaml
    names another run_dir); an output not made yet is an error naming the stage that makes it."""
    cfg = prefalign.load_config("tiny", {"iterative.rounds": 3, "run_dir": str(tmp_path / "before-the-move")})
    root = tmp_path / "moved"
    root.mkdir()
    (root / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    chain = "iter-random-sigmoid-beta0.1-default"
    for r in (2, 3):
        folder = root / "iterative" / chain / f"round-{r}"
        folder.mkdir(parents=True)
        pd.DataFrame({"text": [f"round {r}"], "reward": [float(r)]}).to_parquet(folder / "samples.parquet")
    run = prefalign.open_run(root)
    assert run.config.run_path == root
    assert run.samples("random-sigmoid-beta0.1-default").text.tolist() == ["round 2"]  # round 1 is the grid model
    assert run.samples(f"{chain}-r2").text.tolist() == ["round 3"]
    assert "no samples were drawn from" in str(raised(lambda: run.samples(f"{chain}-r3")))  # the last round
    e = raised(run.samples)
    assert isinstance(e, prefalign.PrefalignError) and "the sample stage has not run" in str(e)
    assert "the report stage has not run" in str(raised(lambda: run.results))


def test_open_run_of_a_directory_that_is_no_run_says_so(tmp_path):
    for path, said in [(tmp_path, "is not a prefalign run directory"), (tmp_path / "none", "is not a directory")]:
        e = raised(lambda: prefalign.open_run(path))  # noqa: B023 - called at once
        assert isinstance(e, prefalign.PrefalignError) and e.exit_code == 2 and said in str(e)
    (tmp_path / "config.yaml").write_text("train: {betaz: [1]}\n")
    e = raised(lambda: prefalign.open_run(tmp_path))
    assert isinstance(e, prefalign.PrefalignError) and "`train.betaz`: unknown key" in str(e)


def test_load_config_reads_presets_paths_mappings_and_overrides(tmp_path):
    tiny = prefalign.load_config("tiny")
    raw = yaml.safe_load(TINY.read_text())
    assert prefalign.load_config(TINY) == prefalign.load_config(str(TINY)) == prefalign.load_config(raw) == tiny
    assert prefalign.load_config(tiny) == tiny
    expected = tiny.model_copy(update={"train": tiny.train.model_copy(update={"betas": [0.5, 2.0]})})
    assert prefalign.load_config("tiny", {"train.betas": [0.5, 2]}) == expected
    assert prefalign.load_config("tiny", ["train.betas=[0.5,2]"]) == expected
    assert prefalign.load_config("tiny", "train.betas=[0.5,2]") == expected  # one `--set` string
    assert prefalign.load_config(raw, {"train.betas": [0.5, 2]}) == expected
    assert raw == yaml.safe_load(TINY.read_text())  # the caller's mapping is not changed
    assert prefalign.load_config({}).name == "experiment"  # the schema's defaults


@pytest.mark.parametrize(
    ("source", "overrides", "said"),
    [
        ("tiny", {"train.betaz": [1]}, "`train.betaz`: unknown key (did you mean `train.betas`?)"),
        ({"sampling": {"num_samples": "lots"}}, None, "`sampling.num_samples`: 'lots' is not an integer"),
        ("tiny", ["evaluate.runs"], "--set 'evaluate.runs': expected key.path=value"),
        ("tiny", ["train.betas=[0.1"], "--set train.betas: value is not valid YAML"),
        ("tiny", {"name.x": 1}, "override 'name.x': `name` is not a section"),
        ("no-such-preset", None, "no config file or preset named 'no-such-preset' (presets: "),
    ],
)
def test_config_errors_are_prefalign_errors_with_exit_code_2(source, overrides, said):
    e = raised(lambda: prefalign.load_config(source, overrides))
    assert isinstance(e, ConfigError) and isinstance(e, prefalign.PrefalignError) and e.exit_code == 2
    assert said in e.said()


def test_a_config_error_says_what_the_cli_says(tmp_path, cli):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  betaz: [0.1]\nsampling: {num_samples: lots}\n")
    e = raised(lambda: prefalign.load_config(bad, ["evaluate.run=3"]))
    proc = cli("config", str(bad), "--set", "evaluate.run=3", check=False)
    assert (proc.returncode, proc.stderr) == (e.exit_code, f"prefalign: {e.said()}\n")


def test_plan_is_the_items_prefalign_plan_prints(tiny_run, cli):
    root, _ = tiny_run
    items = prefalign.plan({**yaml.safe_load(TINY.read_text()), "run_dir": str(root)})
    printed = cli("plan", "tiny", "--set", f"run_dir={root}").stdout.splitlines()
    assert f"{len(items)} items, {len(items)} up to date" in printed[0]
    # each line: stage, state, key, item type, output, what
    assert [tuple(line.split()[2:4]) for line in printed[3:]] == [(item.key, type(item).__name__) for item in items]
    assert all(item.path.is_relative_to(root) for item in items)


def test_run_refuses_an_unknown_stage_before_any_work(tmp_path):
    e = raised(lambda: prefalign.run(prefalign.load_config("tiny", {"run_dir": str(tmp_path / "r")}), "fit"))
    assert isinstance(e, prefalign.PrefalignError) and e.exit_code == 2 and "sample, pairs, train" in str(e)
    assert not (tmp_path / "r").exists()


def test_run_up_to_a_stage_makes_that_stage_and_those_before(tiny_run, tmp_path):
    run = prefalign.run(prefalign.load_config("tiny", {"run_dir": str(tmp_path / "r")}), stages="pairs")
    pd.testing.assert_frame_equal(run.samples(), pd.read_parquet(tiny_run[0] / "samples.parquet"))
    assert sorted(p.name for p in (run.path / "pairs").glob("*.parquet")) == sorted(
        p.name for p in (tiny_run[0] / "pairs").glob("*.parquet")
    )
    assert not (run.path / "models").exists()
    assert "the train stage has not run" in str(raised(lambda: run.model_dir(MODELS[0])))


def test_importing_prefalign_loads_no_torch():
    code = "import sys, prefalign; print(sorted(m for m in ('torch', 'transformers', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
