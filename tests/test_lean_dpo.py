"""The lean DPO trainer computes TRL's losses, gradients and metrics, with far fewer host syncs."""

import copy

import pandas as pd
import pytest
import torch

from prefalign.engine.lean_dpo import LeanDPOTrainer

TEXTS = ["The film was superb and I loved it.", "Awful.", "A long, slow and very dull story about nothing.", "Fine."]


def _trainer(tiny_dir, tmp_path, loss_types, loss_weights=None, precompute=False, policy_dir=None):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir / "policy")
    model = AutoModelForCausalLM.from_pretrained(policy_dir or tiny_dir / "policy", dtype=torch.float32)
    pairs = pd.DataFrame(
        {
            "prompt": "<|endoftext|>",
            "chosen": [TEXTS[i % 4] for i in range(8)],
            "rejected": [TEXTS[(i + 1) % 4] + " no" for i in range(8)],
        }
    )
    args = DPOConfig(
        output_dir=str(tmp_path),
        loss_type=loss_types,
        loss_weights=loss_weights,
        beta=0.5,
        use_cpu=True,
        per_device_train_batch_size=4,
        precompute_ref_log_probs=precompute,
        report_to="none",
    )
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    trainer = LeanDPOTrainer(
        model=model, ref_model=ref, args=args, train_dataset=Dataset.from_pandas(pairs), processing_class=tokenizer
    )
    # Move the policy away from the reference, so log-ratios (and every loss term) are non-trivial.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p), alpha=0.02)
    return trainer, next(iter(trainer.get_train_dataloader()))


def _loss_grads_metrics(trainer, compute, batch) -> tuple:
    """(loss, every gradient, every logged metric but num_tokens) of one `compute(trainer, ...)` loss call."""
    trainer.model.zero_grad()
    loss = compute(trainer, trainer.model, batch, False)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters()}
    metrics = {k: float(torch.as_tensor(v[-1])) for k, v in trainer._metrics["train"].items() if k != "num_tokens"}
    trainer._metrics["train"].clear()
    return loss.detach(), grads, metrics


@pytest.mark.parametrize(
    "loss_types,loss_weights,precompute,sync_free",
    [
        (["sigmoid"], None, False, "never"),
        (["hinge"], None, True, "never"),
        (["ipo"], None, False, "always"),
        (["hinge", "sft"], [1.0, 0.1], False, "never"),
        (["hinge", "sft"], [1.0, 0.1], False, "always"),
        (["sigmoid", "ipo"], [0.7, 0.3], True, "always"),
    ],
)
def test_lean_loss_gradients_and_metrics_equal_trls(
    tiny_dir, tmp_path, loss_types, loss_weights, precompute, sync_free, monkeypatch
):
    """Also with the GPU's sync-free forward (4-D mask, every-position LM head), run here on CPU."""
    from trl import DPOTrainer

    monkeypatch.setattr(LeanDPOTrainer, "sync_free", sync_free)
    trainer, batch = _trainer(tiny_dir, tmp_path, loss_types, loss_weights, precompute)
    assert trainer.lean()
    assert batch["attention_mask"].min() == 0  # the batch is padded: the masks matter
    results = [
        _loss_grads_metrics(trainer, compute, batch)
        for compute in (DPOTrainer._compute_loss, LeanDPOTrainer._compute_loss)
    ]
    (stock_loss, stock_grads, stock_metrics), (lean_loss, lean_grads, lean_metrics) = results
    assert stock_loss.item() != 0
    torch.testing.assert_close(lean_loss, stock_loss)
    for name in stock_grads:
        torch.testing.assert_close(lean_grads[name], stock_grads[name], rtol=1e-4, atol=1e-7)
    assert lean_metrics.keys() == stock_metrics.keys()
    for key in stock_metrics:
        assert lean_metrics[key] == pytest.approx(stock_metrics[key], rel=1e-4, abs=1e-6), key


def test_the_4d_mask_is_causal_and_hides_padding_keys():
    from prefalign.engine.lean_loss import causal_padding_mask

    mask = causal_padding_mask(torch.tensor([[1, 1, 1], [1, 1, 0]]))
    assert mask.shape == (2, 1, 3, 3)
    assert mask[0, 0].tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert mask[1, 0].tolist() == [[True, False, False], [True, True, False], [True, True, False]]


def test_other_settings_go_to_trls_own_loss(tiny_dir, tmp_path):
    trainer, _ = _trainer(tiny_dir, tmp_path, ["bco_pair"])
    assert not trainer.lean()


def test_a_training_run_syncs_with_the_host_once_per_logging_step_not_per_loss(tiny_dir, tmp_path, monkeypatch):
    """Count the tensor-to-Python conversions of a 12-step run: TRL's loss alone makes ~17 per step."""
    from prefalign.stages.train_dpo import train_one
    from prefalign.training.job import DpoJob

    pairs = pd.DataFrame(
        {
            "prompt": "<|endoftext|>",
            "chosen": [TEXTS[i % 4] for i in range(96)],
            "rejected": [TEXTS[(i + 1) % 4] + " no" for i in range(96)],
        }
    )
    pairs.to_parquet(tmp_path / "pairs.parquet")
    calls = {"n": 0}
    for method in ("item", "tolist", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, method)

        def counted(self, *args, _original=original, **kwargs):
            calls["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, counted)
    steps, logging_steps = 12, 6

    def run(overrides):
        calls["n"] = 0
        info = train_one(
            DpoJob(
                tmp_path / "pairs.parquet",
                str(tiny_dir / "policy"),
                tmp_path / "m",
                recipe="seed",
                loss="sigmoid",
                beta=0.1,
                overrides={"max_steps": steps, "logging_steps": logging_steps, **overrides},
            ),
            log=lambda m: None,
        )
        assert sum("loss" in h for h in info["log_history"]) == steps // logging_steps
        return calls["n"]

    lean = run({})
    # Per forward pass transformers itself checks the attention mask for padding twice (2 forwards a step on CPU).
    assert lean <= 4 * steps + 6 * (steps // logging_steps) + 4, lean


def test_a_diverging_training_stops_at_a_logging_step_naming_the_model(tiny_dir, tmp_path):
    from prefalign.errors import TrainingDiverged
    from prefalign.stages.train_dpo import train_one
    from prefalign.training.job import DpoJob

    pairs = pd.DataFrame(
        {
            "prompt": "<|endoftext|>",
            "chosen": [TEXTS[i % 4] for i in range(64)],
            "rejected": [TEXTS[(i + 1) % 4] + " no" for i in range(64)],
        }
    )
    pairs.to_parquet(tmp_path / "pairs.parquet")
    with pytest.raises(
        TrainingDiverged, match=r"training my-model diverged: the training loss is (nan|inf) at step \d"
    ):
        train_one(
            DpoJob(
                tmp_path / "pairs.parquet",
                str(tiny_dir / "policy"),
                tmp_path / "my-model",
                recipe="seed",
                loss="sigmoid",
                beta=0.1,
                overrides={"learning_rate": 1e30, "warmup_steps": 0, "max_steps": 6, "logging_steps": 1},
            ),
            log=lambda m: None,
        )
    assert not (tmp_path / "my-model").exists()


@pytest.mark.parametrize("processes", [1, 2])
def test_the_compiled_step_computes_trls_loss_gradients_and_metrics(tiny_dir, tmp_path, monkeypatch, processes):
    """torch.compile (inductor on this CPU) of the policy's forward and head, and for one process of the
    loss and metrics too: TRL's numbers on a padded batch, for a sum of a preference loss and the SFT
    term (which reads the chosen rows' token log-probs). With several processes (here: said to be
    two) only the forward and head are compiled, the metrics being gathered eagerly."""
    from accelerate import Accelerator
    from trl import DPOTrainer

    trainer, batch = _trainer(tiny_dir, tmp_path, ["sigmoid", "sft"], [1.0, 0.1], precompute=True)
    assert batch["attention_mask"].min() == 0
    trainer.model.train()  # as in a training step (the compiled path serves training only)
    results = []
    for compute, mode in ((DPOTrainer._compute_loss, "eager"), (LeanDPOTrainer._compute_loss, "fused")):
        monkeypatch.setattr(trainer, "compile_step", mode)
        if mode == "fused":  # TRL's own loss needs the true count; gathering in one process returns its input
            monkeypatch.setattr(Accelerator, "num_processes", property(lambda self: processes))
        results.append(_loss_grads_metrics(trainer, compute, batch))
    assert trainer._compiled is not None and trainer._compiled[2] == (processes == 1)  # through torch.compile
    (stock_loss, stock_grads, stock_metrics), (compiled_loss, compiled_grads, compiled_metrics) = results
    torch.testing.assert_close(compiled_loss, stock_loss, rtol=1e-5, atol=1e-6)
    for name in stock_grads:
        torch.testing.assert_close(compiled_grads[name], stock_grads[name], rtol=1e-3, atol=1e-6)
    assert compiled_metrics.keys() == stock_metrics.keys()
    for key in stock_metrics:
        assert compiled_metrics[key] == pytest.approx(stock_metrics[key], rel=1e-4, abs=1e-5), key
    # A batch of another size takes the eager path instead of compiling again.
    assert trainer.compiled_loss(batch["input_ids"].shape[0] - 2) == (None, False)


def test_a_compiled_training_pads_every_batch_to_one_length_and_trains_as_the_eager_one(
    tiny_dir, tmp_path, monkeypatch
):
    """train_one with `compile_step: fused` (this CPU's compiled path): one batch shape for the whole
    run, the same logged losses and final weights as the eager path; an odd last batch runs eagerly."""
    from prefalign.engine import arithmetic
    from prefalign.engine.preference_batches import NumpyPreferenceCollator
    from prefalign.stages.train_dpo import train_one
    from prefalign.training.job import DpoJob

    chosen = [TEXTS[i % 4] for i in range(27)]
    chosen[20] = "Not bad at all, a good cast and a fine score, though the ending drags on and on."  # one long pair
    pairs = pd.DataFrame(
        {"prompt": "<|endoftext|>", "chosen": chosen, "rejected": [TEXTS[(i + 2) % 4] + " no" for i in range(27)]}
    )
    pairs.to_parquet(tmp_path / "pairs.parquet")
    shapes = []
    original = NumpyPreferenceCollator.torch_call  # the lean trainer's collator

    def recorded(self, examples):
        batch = original(self, examples)
        shapes.append(tuple(batch["input_ids"].shape))
        return batch

    monkeypatch.setattr(NumpyPreferenceCollator, "torch_call", recorded)
    # As if this process had compiled code under other arithmetic: the compiled training discards it first.
    monkeypatch.setattr(arithmetic, "_compiled_under", ("code made under other arithmetic",))
    runs = {}
    for mode in ("eager", "fused"):
        shapes.clear()
        info = train_one(
            DpoJob(
                tmp_path / "pairs.parquet",
                str(tiny_dir / "policy"),
                tmp_path / mode,
                recipe="seed",
                loss="sigmoid",
                beta=0.1,
                overrides={"num_train_epochs": 1, "logging_steps": 1, "compile_step": mode, "learning_rate": 1e-3},
            ),
            log=lambda m: None,
        )
        assert info["settings"]["compile_step"] == mode
        runs[mode] = ([h["loss"] for h in info["log_history"] if "loss" in h], list(shapes))
    assert arithmetic._compiled_under == arithmetic.arithmetic_in_force(None)
    (eager_losses, eager_shapes), (fused_losses, fused_shapes) = runs["eager"], runs["fused"]
    assert len(eager_losses) == len(fused_losses) == 4  # 27 pairs at batch 8: 3 full batches and one of 3
    assert len({s[1] for s in eager_shapes}) > 1  # eager pads each batch to its own longest
    assert {s[1] for s in fused_shapes} == {max(s[1] for s in eager_shapes)}  # compiled: one length
    assert fused_losses == pytest.approx(eager_losses, rel=1e-4, abs=1e-6)
    from safetensors.torch import load_file

    eager_weights, fused_weights = (load_file(tmp_path / m / "model.safetensors") for m in ("eager", "fused"))
    for name in eager_weights:
        torch.testing.assert_close(fused_weights[name], eager_weights[name], rtol=1e-3, atol=1e-5)


def _rmsprop_and_schedule(model):
    """The `seed` recipe's optimizer as the Trainer makes it (two parameter groups) and its warmup schedule."""
    from transformers import get_scheduler

    params = list(model.parameters())
    optimizer = torch.optim.RMSprop([{"params": params[:2], "weight_decay": 0.01}, {"params": params[2:]}], lr=5e-3)
    return optimizer, lambda: get_scheduler("linear", optimizer, num_warmup_steps=3, num_training_steps=8)


def test_the_compiled_optimizer_step_updates_the_weights_as_the_eager_one_and_compiles_once():
    """compile_optimizer_step (inductor on this CPU): same weights, step by step, on the same gradients,
    the scheduler's learning rates followed without a graph per value."""
    from torch._dynamo.utils import counters

    from prefalign.engine.compiled_optimizer import compile_optimizer_step

    torch.manual_seed(0)
    eager_model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    compiled_model = copy.deepcopy(eager_model)
    (eager, eager_schedule), (compiled, compiled_schedule) = map(_rmsprop_and_schedule, (eager_model, compiled_model))
    assert compile_optimizer_step(compiled)
    assert not compile_optimizer_step(compiled)  # once per optimizer
    schedulers = eager_schedule(), compiled_schedule()
    torch._dynamo.reset()
    counters.clear()
    graphs = []
    for _step in range(8):
        grads = [torch.randn_like(p) for p in eager_model.parameters()]
        for model, optimizer, scheduler in zip((eager_model, compiled_model), (eager, compiled), schedulers):
            for p, g in zip(model.parameters(), grads):
                p.grad = g.clone()
            optimizer.step()
            scheduler.step()
        for a, b in zip(eager_model.parameters(), compiled_model.parameters()):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
        assert [float(g["lr"]) for g in compiled.param_groups] == pytest.approx([g["lr"] for g in eager.param_groups])
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[1] > 0  # it went through torch.compile
    assert graphs[-1] == graphs[1]  # and compiled nothing new for the later learning rates


def test_the_learning_rate_is_read_from_the_schedule_not_its_tensor():
    """scheduled_learning_rate (what the lean Trainer logs each step): the value the scheduler set,
    with rates as numbers or as the compiled update's tensors, bare or wrapped by accelerate."""
    from accelerate.scheduler import AcceleratedScheduler

    from prefalign.engine.compiled_optimizer import compile_optimizer_step, scheduled_learning_rate

    model = torch.nn.Linear(4, 2)
    for as_tensors in (False, True):
        optimizer, schedule = _rmsprop_and_schedule(model)
        if as_tensors:
            assert compile_optimizer_step(optimizer, lr_device=torch.device("cpu"))
            assert all(torch.is_tensor(g["lr"]) for g in optimizer.param_groups)
        scheduler = schedule()
        wrapped = AcceleratedScheduler(scheduler, optimizer, step_with_optimizer=False)
        seen = []
        for _ in range(6):
            expected = float(scheduler.get_last_lr()[0])
            assert scheduled_learning_rate(scheduler) == pytest.approx(expected, rel=1e-6)
            assert scheduled_learning_rate(wrapped) == pytest.approx(expected, rel=1e-6)
            seen.append(expected)
            scheduler.step()
        assert len(set(seen)) > 3  # warmup then decay: the rate moved
    assert scheduled_learning_rate(torch.optim.lr_scheduler.StepLR(optimizer, 2)) is None  # not a LambdaLR


def test_a_failed_optimizer_compilation_falls_back_to_the_eager_step(monkeypatch):
    from prefalign.engine.compiled_optimizer import compile_optimizer_step

    def broken(fn, *args, **kwargs):
        def fails(*a, **k):
            raise RuntimeError("no C compiler\nmore detail")

        return fails

    monkeypatch.setattr(torch, "compile", broken)
    torch.manual_seed(0)
    eager_model = torch.nn.Linear(4, 2)
    fallback_model = copy.deepcopy(eager_model)
    (eager, _), (fallback, _) = map(_rmsprop_and_schedule, (eager_model, fallback_model))
    notes = []
    assert compile_optimizer_step(fallback, notes.append)
    for _ in range(3):
        grads = [torch.randn_like(p) for p in eager_model.parameters()]
        for model, optimizer in ((eager_model, eager), (fallback_model, fallback)):
            for p, g in zip(model.parameters(), grads):
                p.grad = g.clone()
            optimizer.step()
        for a, b in zip(eager_model.parameters(), fallback_model.parameters()):
            torch.testing.assert_close(b, a)
    assert len(notes) == 1  # said once, then the eager step without trying again


def test_the_flop_count_is_transformers_with_the_parameters_counted_once(tiny_dir, tmp_path, monkeypatch):
    from trl import DPOTrainer

    trainer, batch = _trainer(tiny_dir, tmp_path, ["sigmoid"])
    expected = DPOTrainer.floating_point_ops(trainer, batch)
    assert expected > 0
    counted = []
    original = type(trainer.model).num_parameters
    monkeypatch.setattr(
        type(trainer.model), "num_parameters", lambda self, *a, **k: counted.append(1) or original(self, *a, **k)
    )
    assert [trainer.floating_point_ops(batch) for _ in range(3)] == [expected] * 3
    assert len(counted) == 1


def test_the_4d_mask_is_used_only_where_the_architecture_takes_it(tiny_dir, tmp_path, monkeypatch):
    """OPT derives its positions from the 2-D mask and fails on a 4-D one: the sync-free forward
    keeps the 2-D mask for it, and its loss and gradients still equal TRL's."""
    from transformers import AutoModelForCausalLM, OPTConfig, OPTForCausalLM
    from trl import DPOTrainer

    from prefalign.engine.lean_loss import four_d_mask_works

    gpt2 = AutoModelForCausalLM.from_pretrained(tiny_dir / "policy", attn_implementation="sdpa").train()
    assert four_d_mask_works(gpt2) and gpt2.training  # and the check leaves the training mode as it was
    torch.manual_seed(0)
    OPTForCausalLM(
        OPTConfig(
            vocab_size=gpt2.config.vocab_size,
            hidden_size=16,
            ffn_dim=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            word_embed_proj_dim=16,
            max_position_embeddings=64,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
    ).save_pretrained(tmp_path / "opt")
    opt = AutoModelForCausalLM.from_pretrained(tmp_path / "opt", attn_implementation="sdpa")
    assert not four_d_mask_works(opt)

    monkeypatch.setattr(LeanDPOTrainer, "sync_free", "always")
    trainer, batch = _trainer(tiny_dir, tmp_path, ["sigmoid"], policy_dir=tmp_path / "opt")
    results = [
        _loss_grads_metrics(trainer, compute, batch)
        for compute in (DPOTrainer._compute_loss, LeanDPOTrainer._compute_loss)
    ]
    (stock_loss, stock_grads, _), (lean_loss, lean_grads, _) = results
    torch.testing.assert_close(lean_loss, stock_loss)
    for name in stock_grads:
        torch.testing.assert_close(lean_grads[name], stock_grads[name], rtol=1e-4, atol=1e-7)


def test_the_4d_mask_is_checked_once_and_only_where_it_would_be_used(tiny_dir, tmp_path, monkeypatch):
    """On CPU the eager step keeps the 2-D mask (sync_free "gpu"), so the architecture check is not run."""
    import prefalign.engine.lean_dpo as lean_dpo

    checks = []
    monkeypatch.setattr(lean_dpo, "four_d_mask_works", lambda model: checks.append(model) or True)
    trainer, batch = _trainer(tiny_dir, tmp_path, ["sigmoid"])
    for sync_free, expected in (("gpu", 0), ("always", 1), ("always", 1)):
        monkeypatch.setattr(LeanDPOTrainer, "sync_free", sync_free)
        LeanDPOTrainer._compute_loss(trainer, trainer.model, batch, False)
        assert len(checks) == expected
