"""Several processes (`--num-processes 2`: two real CPU processes through accelerate launch), and LoRA.

Two processes sample two shards under their own seeds, so their texts differ from a one-process
run's; given the one-process run's pairs (`tiny_run`), models trained by two processes together
must match its weights (data mode splits each batch of 8 over the processes, so each step sees the
same 8 pairs).
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from helpers import MODELS, alive, prefalign, started, wait_until

from prefalign.pipeline.distributed import shard_bounds, shard_seed
from prefalign.pipeline.runner import independent_models, parallel_mode


def max_difference(root_a, root_b, name: str) -> float:
    from safetensors.torch import load_file

    a, b = (load_file(r / "models" / name / "model.safetensors") for r in (root_a, root_b))
    assert a.keys() == b.keys()
    return max((a[t] - b[t]).abs().max().item() for t in a)


@pytest.mark.parametrize("n, count", [(400, 2), (401, 2), (5000, 3), (2, 8), (0, 2)])
def test_shards_cover_every_row_once(n, count):
    bounds = [shard_bounds(n, i, count) for i in range(count)]
    rows = [r for start, stop in bounds for r in range(start, stop)]
    assert rows == list(range(n))
    assert max(stop - start for start, stop in bounds) - min(stop - start for start, stop in bounds) <= 1


def test_shard_seeds_are_the_run_seed_alone_and_distinct_in_several():
    assert shard_seed(7, 0, 1) == 7  # a one-process run samples what it always did
    seeds = {shard_seed(7, i, n) for n in (2, 3, 4) for i in range(n)}
    assert len(seeds) == 9 and shard_seed(7, 1, 2) == shard_seed(7, 1, 2)


def test_grid_models_form_one_batch_and_rounds_stand_alone(tiny_dir):
    from prefalign.config.loader import load_config
    from prefalign.pipeline.items import DpoModel, IterativeRound
    from prefalign.pipeline.plan import plan

    items = plan(
        load_config(
            "tiny", ["iterative.rounds=3", "iterative.losses=[sigmoid]", "iterative.betas=[0.1]", "run_dir=/tmp/unused"]
        )
    )
    first = next(i for i, item in enumerate(items) if isinstance(item, DpoModel))
    batch = independent_models(items, first)
    assert len(batch) == len(MODELS) and all(type(m) is DpoModel for m in batch)
    rounds = [i for i, item in enumerate(items) if isinstance(item, IterativeRound)]
    assert [len(independent_models(items, i)) for i in rounds] == [1, 1]
    assert parallel_mode(None, 6, 2) == "grid" and parallel_mode(None, 1, 2) == "data"
    assert parallel_mode("data", 6, 2) == "data"


def test_two_processes_in_grid_mode_make_every_output_once(tiny_dir, tmp_path):
    root = tmp_path / "grid"
    prefalign(
        "run", "tiny", "--set", f"run_dir={root}", "--set", "pairs.strategies=[random,margin]", "--num-processes", "2"
    )
    samples = pd.read_parquet(root / "samples.parquet")
    assert len(samples) == 400 and json.loads((root / "samples.meta.json").read_text())["world_size"] == 2
    # The two shards come from different seeds: rows 0-199 and 200-399 are not the same draws.
    first, second = samples.text[:200].tolist(), samples.text[200:].tolist()
    assert sum(a == b for a, b in zip(first, second)) < 20
    processes = []
    for name in MODELS[:4]:  # each model trained once, by one of the two processes
        info = json.loads((root / "models" / name / "train.json").read_text())
        assert (info["world_size"], info["parallel"]) == (2, "grid")
        processes.append(info["process"])
    assert sorted(processes) == [0, 0, 1, 1]
    for model in ["original", *MODELS[:4]]:
        for k in (0, 1):
            run = json.loads((root / "eval" / model / f"run-{k:02d}.json").read_text())
            assert run["samples"] == 200 and run["world_size"] == 2
            assert len(pd.read_parquet(root / "eval" / model / f"run-{k:02d}.parquet")) == 200
    results = pd.read_csv(root / "results.csv")
    assert len(results) == (1 + 4 + 4) * 2 and (root / "report.md").exists()  # the models, best-of-1/2/4/8
    # the best-of-N pool, sampled in shards by both processes: draws 1..7 of 100 texts each run
    for k in (0, 1):
        assert len(pd.read_parquet(root / "eval" / "best-of-n" / f"run-{k:02d}-pool.parquet")) == 700
    assert not list(root.rglob(".*tmp*"))  # no shard parts or temporary files left
    # A second launch with the same seed samples the same texts; one of its processes then fails
    # (no pair can pass the threshold): the run stops with that process's message, not a hang.
    again = tmp_path / "again"
    proc = prefalign(
        "pairs",
        "tiny",
        "--set",
        f"run_dir={again}",
        "--set",
        "pairs.threshold=100",
        "--num-processes",
        "2",
        check=False,
    )
    pd.testing.assert_frame_equal(pd.read_parquet(again / "samples.parquet"), samples)
    assert proc.returncode == 1
    assert "threshold: cannot build any pair" in proc.stderr and "Traceback" not in proc.stderr


def test_two_processes_in_data_mode_train_each_model_together(tiny_run, tmp_path):
    import shutil

    serial, _ = tiny_run
    root = tmp_path / "data"
    (root / "pairs").mkdir(parents=True)
    for name in ("samples.parquet", "samples.meta.json", "pairs/margin.parquet", "pairs/margin.meta.json"):
        shutil.copy(serial / name, root / name)  # the one-process run's pairs: the same data to train on
    prefalign(
        "train",
        "tiny",
        "--set",
        f"run_dir={root}",
        "--set",
        "train.parallel=data",
        "--set",
        "pairs.strategies=[margin]",
        "--num-processes",
        "2",
    )
    for name in [m for m in MODELS if m.startswith("margin")]:
        info = json.loads((root / "models" / name / "train.json").read_text())
        assert (info["world_size"], info["parallel"]) == (2, "data")
        assert info["settings"]["per_device_train_batch_size"] == 4  # 8 per step, split over the two
        digests = info["weights_digests"]
        assert len(digests) == 2 and digests[0] == digests[1]  # both processes ended with the same weights
        assert max_difference(root, serial, name) < 5e-4, name


def test_num_processes_refuses_what_cannot_be_started(tiny_dir, tmp_path, monkeypatch, capsys):
    from prefalign.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["run", "tiny", "--num-processes", "2"]) == 2
    assert "already one of several" in capsys.readouterr().err
    monkeypatch.delenv("WORLD_SIZE")
    assert (
        main(
            [
                "run",
                "tiny",
                "--set",
                "train.parallel=data",
                "--set",
                "train.dpo.per_device_train_batch_size=5",
                "--num-processes",
                "2",
                "--set",
                f"run_dir={tmp_path / 'run'}",
            ]
        )
        == 2
    )
    assert "divisible by 2" in capsys.readouterr().err and not (tmp_path / "run").exists()
    # On the CPU, more processes than cores (a typo: 99 python processes loading torch) is refused at once.
    assert (
        main(["run", "tiny", "--num-processes", "999", "--set", "device=cpu", "--set", f"run_dir={tmp_path / 'run'}"])
        == 2
    )
    assert "give at most" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_lora_changes_only_adapters_and_the_merged_model_evaluates(tiny_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    root = tmp_path / "lora"
    prefalign(
        "run",
        "tiny",
        "--set",
        f"run_dir={root}",
        "--set",
        "pairs.strategies=[margin]",
        "--set",
        "train.losses=[sigmoid]",
        "--set",
        "train.lora={r: 4, alpha: 8, target_modules: [c_attn]}",
        "--set",
        "evaluate.runs=1",
    )
    model_dir = root / "models" / "margin-sigmoid-beta0.1-default"
    adapter = load_file(model_dir / "adapter" / "adapter_model.safetensors")
    assert adapter and all("lora_" in name for name in adapter)
    merged = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    original = AutoModelForCausalLM.from_pretrained(tiny_dir / "policy").state_dict()
    changed = {name for name in original if (merged[name] - original[name]).abs().max() > 0}
    assert changed and all("c_attn.weight" in name for name in changed), changed
    results = pd.read_csv(root / "results.csv")
    results = results[results.method != "best_of_n"]
    assert set(results.model) == {"original", "margin-sigmoid-beta0.1-default"}
    assert (results[results.model != "original"].kl_seq > 0).all()


def test_lora_target_modules_the_model_lacks_are_named_with_those_it_has(tiny_policy):
    from prefalign.models.loading import ModelLoadError
    from prefalign.training.lora import lora_config

    settings = {"r": 4, "alpha": 8, "dropout": 0.0}
    with pytest.raises(ModelLoadError, match=r"q_proj.*c_attn"):
        lora_config({**settings, "target_modules": ["q_proj"]}, tiny_policy[0], "tiny")
    config = lora_config({**settings, "target_modules": ["c_attn"]}, tiny_policy[0], "tiny")
    assert config.r == 4 and config.fan_in_fan_out  # GPT-2's Conv1D layers store their weights transposed


def test_lora_on_an_architecture_peft_has_no_defaults_for_adapts_the_layers_peft_accepts(tiny_policy):
    """Mamba and Phi-3 have no peft default target modules (peft raised "Please specify
    `target_modules`" mid-run), and peft refuses a Mamba's `out_proj` (also in `all-linear`)."""
    from peft import get_peft_model
    from transformers import MambaConfig, MambaForCausalLM, Phi3Config, Phi3ForCausalLM

    from prefalign.models.loading import ModelLoadError
    from prefalign.training.lora import lora_config

    settings, said = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": None}, []
    mamba = MambaForCausalLM(MambaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, state_size=4))
    phi3 = Phi3ForCausalLM(
        Phi3Config(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            pad_token_id=0,
        )
    )
    cases = [
        (mamba, None, {"in_proj", "x_proj", "dt_proj"}),
        (mamba, "all-linear", {"in_proj", "x_proj", "dt_proj"}),
        (phi3, None, {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}),
        (phi3, "all-linear", "all-linear"),
    ]
    for model, targets, expected in cases:  # the output head (lm_head) is never adapted
        config = lora_config({**settings, "target_modules": targets}, model, "local", log=said.append)
        assert (config.target_modules if isinstance(expected, str) else set(config.target_modules)) == expected
        get_peft_model(model, config).unload()  # peft accepts them
    assert "peft has no default target modules for 'mamba'" in said[0]
    for refused in ("out_proj", "conv1d"):  # a linear layer and a convolution peft refuses on Mamba
        with pytest.raises(ModelLoadError, match=rf"peft cannot adapt \['{refused}'\] on 'mamba' models"):
            lora_config({**settings, "target_modules": [refused]}, mamba, "local")


@pytest.mark.skipif(not __import__("os").path.isdir("/proc"), reason="reads /proc")
def test_a_process_whose_parent_is_killed_ends_itself(tmp_path):
    """exit_with_parent: a grandchild outlives its SIGKILLed parent by about one poll, not for good."""
    import os
    import signal
    import sys

    pid_file = tmp_path / "grandchild.pid"
    ready = tmp_path / "watching"
    grandchild = (
        "import pathlib, time; from prefalign.pipeline.distributed import exit_with_parent; exit_with_parent(0.1); "
        f"pathlib.Path({str(ready)!r}).touch(); time.sleep(600)"
    )
    parent_script = (
        f"import subprocess, sys, pathlib, time; "
        f"p = subprocess.Popen([sys.executable, '-c', {grandchild!r}]); "
        f"pathlib.Path({str(pid_file)!r}).write_text(str(p.pid)); time.sleep(600)"
    )
    with started([sys.executable, "-c", parent_script]) as parent:
        wait_until(lambda: pid_file.exists() and pid_file.read_text(), timeout=120, what="the grandchild's pid")
        wait_until(ready.exists, timeout=120, what="the grandchild to watch its parent")  # prefalign imported
        grandchild_pid = int(pid_file.read_text())
        assert alive(grandchild_pid)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        wait_until(lambda: not alive(grandchild_pid), timeout=60, what="the orphaned grandchild to end itself")
