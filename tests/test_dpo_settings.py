"""A DPO training's settings from its recipe, overrides, precision and device: plain values, no model."""

from pathlib import Path

from prefalign.config.recipes import OWN_SETTINGS, RECIPE_PRECISION, RECIPES
from prefalign.pipeline.distributed import Ranks
from prefalign.training.dpo_settings import DeviceTraits, dpo_settings, recipe_settings, resolve_loss
from prefalign.training.job import DpoJob

CPU = DeviceTraits("cpu")
AMPERE = DeviceTraits("cuda", bf16=True, tf32=True)  # an A100 / H100: bf16 and TF32
T4 = DeviceTraits("cuda")  # a GPU with neither


def _job(recipe: str = "seed", **fields) -> DpoJob:
    return DpoJob(Path("pairs.parquet"), "policy", Path("out"), recipe=recipe, **fields)


def settings(recipe: str = "seed", device: DeviceTraits = CPU, **fields) -> dict:
    """Every setting (DPOConfig fields and prefalign's own switches) of one training."""
    return dpo_settings(_job(recipe, **fields), device, "/tmp/x")[1]


def test_the_seed_recipe_is_tf32_on_cuda_and_plain_fp32_elsewhere():
    assert RECIPE_PRECISION["seed"] == "tf32"
    assert (settings(device=AMPERE)["tf32"], settings(device=AMPERE)["bf16"]) == (True, False)
    assert settings(device=AMPERE, precision="fp32")["tf32"] is False
    assert "tf32" not in settings() and settings()["bf16"] is False
    # A GPU without TF32 (T4, V100): the recipe's TF32, or a config's, is plain fp32 there, not an error.
    assert settings(device=T4)["tf32"] is False
    assert settings(device=T4, precision="tf32")["tf32"] is False


def test_bf16_precision_reaches_the_trainer_and_the_override_wins():
    assert RECIPE_PRECISION["default"] == "auto"
    assert settings(precision="bf16")["bf16"] is True
    assert settings()["bf16"] is False and settings("default")["bf16"] is False
    assert settings("default", device=AMPERE)["bf16"] is True and settings("default", device=T4)["bf16"] is False
    assert settings(overrides={"bf16": False}, precision="bf16")["bf16"] is False


def test_seed_recipe_recomputes_the_reference_each_step_on_cpu_unless_told_otherwise():
    assert RECIPES["seed"]["precompute_ref_log_probs"] == "on_gpu"
    assert settings()["precompute_ref_log_probs"] is False
    assert settings(device=AMPERE)["precompute_ref_log_probs"] is True
    assert settings(overrides={"precompute_ref_log_probs": True})["precompute_ref_log_probs"] is True
    # The Trainer's per-step NaN filter reads the loss on the host; it is off unless asked for.
    assert settings()["logging_nan_inf_filter"] is False


def test_the_step_is_compiled_with_cuda_graphs_on_one_gpu_only():
    assert settings(device=AMPERE)["compile_step"] == "graphs"
    assert settings("default", device=AMPERE, ranks=Ranks(index=0, count=2))["compile_step"] == "eager"
    assert settings()["compile_step"] == "eager"
    # Asked for on a CPU: compiled, without CUDA graphs; a user's setting wins everywhere.
    assert settings(overrides={"compile_step": "graphs"})["compile_step"] == "fused"
    assert settings(device=AMPERE, overrides={"compile_step": "eager"})["compile_step"] == "eager"


def test_batches_reach_a_gpu_without_the_host_waiting_for_the_copy():
    on_gpu = settings("default", device=AMPERE)
    assert on_gpu["accelerator_config"] == {"non_blocking": True} and on_gpu["dataloader_pin_memory"] is True
    assert "accelerator_config" not in settings() and settings()["use_cpu"] is True
    mine = {"accelerator_config": {"non_blocking": False}}
    assert settings("default", device=AMPERE, overrides=mine)["accelerator_config"] == {"non_blocking": False}


def test_processes_training_one_model_split_its_batch():
    together = settings("default", ranks=Ranks(index=1, count=2))
    assert together["per_device_train_batch_size"] == RECIPES["default"]["per_device_train_batch_size"] // 2
    assert together["ddp_find_unused_parameters"] is False
    assert "ddp_find_unused_parameters" not in settings("default")


def test_the_training_sets_loss_beta_seed_checkpoints_and_trackers():
    every = settings("default", loss="slic", slic_sft_weight=0.3, beta=0.5, seed=7, checkpoint_steps=5)
    assert every["loss_type"] == ["hinge", "sft"] and every["loss_weights"] == [1.0, 0.3]
    assert (every["beta"], every["seed"], every["data_seed"], every["output_dir"]) == (0.5, 7, 7, "/tmp/x")
    assert (every["save_strategy"], every["save_steps"], every["save_total_limit"]) == ("steps", 5, 1)
    assert every["report_to"] == "none" and settings()["save_strategy"] == "no"
    tracked = dpo_settings(_job(), CPU, "/tmp/x", tracker={"report_to": ["tensorboard"], "run_name": "m"})[1]
    assert tracked["report_to"] == ["tensorboard"] and tracked["run_name"] == "m"


def test_max_length_is_lowered_to_the_policy_positions():
    assert dpo_settings(_job(), CPU, "/tmp/x", positions=64)[1]["max_length"] == 64
    assert dpo_settings(_job(), CPU, "/tmp/x", positions=1024)[1]["max_length"] == RECIPES["seed"]["max_length"]


def test_length_grouped_pairs_are_read_in_the_order_given():
    assert settings("default")["train_sampling_strategy"] == "sequential"
    assert "train_sampling_strategy" not in settings("default", overrides={"group_by_length": False})


def test_prefalign_own_switches_stay_out_of_the_dpo_config():
    fields, own = recipe_settings("default", {}, None, CPU)
    assert set(own) == set(OWN_SETTINGS) and not set(fields) & set(OWN_SETTINGS)
    trl_fields, every = dpo_settings(_job("default"), CPU, "/tmp/x")
    assert not set(trl_fields) & set(OWN_SETTINGS) and every == {**trl_fields, **own}


def test_the_settings_make_a_dpo_config():
    from trl import DPOConfig

    args = DPOConfig(**dpo_settings(_job("seed"), CPU, "/tmp/x")[0])
    assert (args.learning_rate, args.optim, args.use_cpu, args.bf16) == (5e-3, "rmsprop", True, False)


def test_loss_entries_resolve_to_trl_types_and_weights():
    from prefalign.config.schema import LossMix

    assert resolve_loss("sigmoid") == ("sigmoid", ["sigmoid"], None)
    assert resolve_loss("slic", 0.3) == ("slic", ["hinge", "sft"], [1.0, 0.3])
    mix = LossMix(types=["sigmoid", "bco_pair"], weights=[0.8, 0.2])
    assert resolve_loss(mix) == ("0.8sigmoid+0.2bco_pair", ["sigmoid", "bco_pair"], [0.8, 0.2])
    assert resolve_loss(LossMix(types=["ipo"], name="myipo"))[0] == "myipo"
