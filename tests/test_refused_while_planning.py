"""Inputs that used to pass `prefalign plan` and fail in a stage (exit 1) are refused while planning
(exit 2, nothing written), naming the key; and a run directory that only a failed run wrote to is no
other config's."""

from __future__ import annotations

import datasets
import pandas as pd
import pytest

SMALL = ("--set", "sampling.num_samples=24", "--set", "sampling.batch_size=24")


def refused(proc, *words):
    """The one-line refusal of a bad input while planning: exit 2, the words said, no traceback."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for word in words:
        assert word in proc.stderr, (word, proc.stderr)


def corpus(tmp_path, kind: str, columns=("body", "label")):
    texts = ["A warm and funny film about two brothers.", "Dull from start to finish, sadly."]
    df = pd.DataFrame({columns[0]: texts, columns[1]: [1, 0]})
    path = tmp_path / f"prompts.{kind}"
    {"csv": lambda: df.to_csv(path, index=False), "jsonl": lambda: df.to_json(path, orient="records", lines=True)}.get(
        kind, lambda: df.to_parquet(path)
    )()
    return path


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_a_text_column_the_corpus_lacks_is_refused_naming_the_columns_it_has(tmp_path, cli, kind):
    path = corpus(tmp_path, kind)
    run_dir = ("--set", f"run_dir={tmp_path / 'run'}")
    proc = cli("plan", "tiny", *run_dir, "--set", f"sampling.prompts={{corpus: {path}}}", check=False)
    refused(proc, "sampling.prompts.text_column", "'text'", "body", "label")
    proc = cli("run", "tiny", *run_dir, "--set", f"sampling.prompts={{corpus: {path}, text_column: txt}}", check=False)
    refused(proc, "sampling.prompts.text_column", "'txt'", "body")
    assert not (tmp_path / "run").exists()
    cli("plan", "tiny", *run_dir, "--set", f"sampling.prompts={{corpus: {path}, text_column: body}}")
    # The default `text` also finds the usual alternatives, as reading the corpus does.
    cli("plan", "tiny", *run_dir, "--set", f"sampling.prompts={{corpus: {corpus(tmp_path, kind, ('review', 'y'))}}}")


def test_a_hub_dataset_s_text_column_is_checked_from_the_local_cache_only(tmp_path, cli, monkeypatch):
    class Builder:
        info = datasets.DatasetInfo(features=datasets.Features({"sentence": datasets.Value("string")}))

    asked = []

    def cached_builder(name, subset=None, **kwargs):
        asked.append((name, subset, datasets.config.HF_HUB_OFFLINE))
        if name != "someone/cached":
            raise FileNotFoundError(f"{name} is not in the cache")
        return Builder()

    monkeypatch.setattr(datasets, "load_dataset_builder", cached_builder)
    run_dir = ("--set", f"run_dir={tmp_path / 'run'}")
    proc = cli(
        "plan", "tiny", *run_dir, "--set", "sampling.prompts={corpus: someone/cached, text_column: body}", check=False
    )
    refused(proc, "sampling.prompts.text_column", "'body'", "sentence")
    cli("plan", "tiny", *run_dir, "--set", "sampling.prompts={corpus: someone/cached}")  # `text` finds `sentence`
    cli("plan", "tiny", *run_dir, "--set", "sampling.prompts={corpus: someone/elsewhere, text_column: body}")
    assert {offline for *_, offline in asked} == {True}  # never the network while planning


def test_a_max_length_beyond_a_built_in_policy_s_positions_is_refused_while_planning(tmp_path, cli):
    run_dir = ("--set", f"run_dir={tmp_path / 'run'}")
    proc = cli("run", "tiny", *run_dir, "--set", "sampling.max_length=128", check=False)  # tiny: 128 positions
    refused(proc, "sampling.max_length", "128 positions", "at most 127")
    assert not (tmp_path / "run").exists()
    # Prompts count within max_length (BOS + prompt + completion): the same limit.
    prompts = f"sampling.prompts={{corpus: {corpus(tmp_path, 'csv')}, text_column: body}}"
    refused(cli("plan", "tiny", *run_dir, "--set", "sampling.max_length=200", "--set", prompts, check=False))
    cli("plan", "tiny", *run_dir, "--set", "sampling.max_length=127", "--set", prompts)


def test_best_worst_with_prompts_is_bounded_by_the_distinct_prompts(tiny_dir, tmp_path, cli):
    """Two corpus texts cut at 2..8 tokens give fewer distinct prompts than the 6 drawn (24 samples, 4 each):
    draws of one prompt are one group, so one best/worst pair between them."""
    from prefalign.config.loader import load_config
    from prefalign.pipeline.pair_bounds import prompt_group_sizes
    from prefalign.pipeline.plan import plan

    prompts = f"sampling.prompts={{corpus: {corpus(tmp_path, 'csv')}, text_column: body}}"
    settings = (
        *SMALL,
        "--set",
        prompts,
        "--set",
        "pairs.strategies=[best_worst]",
        "--set",
        f"run_dir={tmp_path / 'r'}",
    )
    cfg = load_config("tiny", [a for a in settings if a != "--set"] + ["pairs.count=1"])
    samples = next(i for i in plan(cfg) if type(i).__name__ == "Samples")
    distinct = len(prompt_group_sizes(samples, samples.policy))
    assert 1 < distinct < 6
    proc = cli("pairs", "tiny", *settings, "--set", f"pairs.count={distinct + 1}", check=False)
    refused(proc, f"pairs.count {distinct + 1}", f"{distinct} distinct prompts", f"at most {distinct}")
    assert not (tmp_path / "r").exists()
    # The bound is exact: that many pairs are built from the samples (every reward differs).
    cli("pairs", "tiny", *settings, "--set", f"pairs.count={distinct}")
    assert len(pd.read_parquet(tmp_path / "r" / "pairs" / "best_worst.parquet")) == distinct


def test_more_pairs_than_the_samples_on_disk_give_are_refused_before_any_work(tiny_dir, tmp_path, cli):
    """24 samples allow 276 couples, so the plan lets pairs.count=200 through before sampling; the threshold
    rule's couples are (below) x (above) <= 144. Once the samples are on disk it is known before any work."""
    root = tmp_path / "run"
    settings = (*SMALL, "--set", f"run_dir={root}", "--set", "pairs.strategies=[threshold]")
    cli("sample", "tiny", *settings)
    rewards = pd.read_parquet(root / "samples.parquet").reward
    allowed = int((rewards < 0).sum() * (rewards >= 0).sum())
    assert allowed < 200
    proc = cli("pairs", "tiny", *settings, "--set", "pairs.count=200", check=False)
    refused(proc, "pairs.count 200", f"allow only {allowed}", "lower pairs.count")
    assert not (root / "pairs").exists()
    refused(cli("plan", "tiny", *settings, "--set", "pairs.count=200", check=False), "pairs.count 200")
    cli("pairs", "tiny", *settings, "--set", f"pairs.count={allowed}")
    assert len(pd.read_parquet(root / "pairs" / "threshold.parquet")) == allowed


def test_a_run_dir_that_only_a_failed_run_wrote_to_takes_the_corrected_config(tiny_dir, tmp_path, cli):
    root = tmp_path / "run"
    pairs = ("--set", f"run_dir={root}", "--set", "pairs.strategies=[threshold]", "--set", "pairs.count=20")
    # A first run that fails in the pairs stage (no sample reaches reward 100), its samples on disk.
    proc = cli("pairs", "tiny", *SMALL, *pairs, "--set", "pairs.threshold=100", check=False)
    assert proc.returncode == 1 and "cannot build any pair" in proc.stderr
    assert (root / "samples.parquet").exists() and not (root / "config.yaml").exists()
    # Corrected, with other samples too: what the failed run left is no other config's, so it proceeds.
    fixed = (*pairs, "--set", "sampling.num_samples=30", "--set", "sampling.batch_size=30")
    cli("pairs", "tiny", *fixed)
    assert len(pd.read_parquet(root / "pairs" / "threshold.parquet")) == 20
    assert "num_samples: 30" in (root / "config.yaml").read_text()
    # That run finished: its outputs are another config's for the next one, refused without --update.
    written = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and p.name != ".lock"}
    proc = cli("pairs", "tiny", *fixed, "--set", "sampling.seed=7", check=False)
    refused(proc, "another config", "sampling.seed (0 there, 7 here)", "--update")
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and p.name != ".lock"} == written
    cli("pairs", "tiny", *fixed, "--set", "sampling.seed=7", "--update")


def test_only_outputs_that_a_run_which_succeeded_made_are_another_config_s(tmp_path, monkeypatch):
    """The record of finished keys decides; a directory from before the record counts every output once a
    run succeeded there (its config.yaml), and its first record keeps what is on disk."""
    import json

    from prefalign.config.loader import load_config
    from prefalign.pipeline import provenance
    from prefalign.pipeline.items import Original, RewardModel
    from prefalign.pipeline.plan import plan
    from prefalign.pipeline.provenance import FINISHED, finished_keys, keys_on_disk, replaced_outputs

    cfg = load_config("tiny", [f"run_dir={tmp_path}"])
    items = plan(cfg, Original("p", None, "hub:p@main"), RewardModel("r", None, "POSITIVE", "hub:r@main"))
    samples = next(i for i in items if type(i).__name__ == "Samples")
    samples.meta.write_text(json.dumps({"key": "another"}))
    assert replaced_outputs(cfg, items) == [] and finished_keys(tmp_path) is None  # a failed run's leftover
    (tmp_path / "config.yaml").write_text("name: before\n")
    assert replaced_outputs(cfg, items) == [samples]  # from before the record: a run succeeded here
    assert keys_on_disk(tmp_path) == {"another"}
    (tmp_path / FINISHED).write_text(json.dumps({"keys": ["another"]}))
    assert replaced_outputs(cfg, items) == [samples]
    (tmp_path / FINISHED).write_text(json.dumps({"keys": ["made-by-a-run-that-finished"]}))
    assert replaced_outputs(cfg, items) == []
    # The first record in a directory from before it keeps what is on disk as finished, and adds the run's.
    (tmp_path / FINISHED).unlink()
    monkeypatch.setattr(provenance, "model_info", lambda cfg: {})
    report = items[-1]
    provenance.write_provenance(cfg, [report])
    assert finished_keys(tmp_path) == {"another", report.key}
