"""benchmarks/precision.py's verdict: is a faster precision's spread of results within fp32's
seed-to-seed spread? Checked on made-up run means whose answer is known."""

import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("precision_bench", ROOT / "benchmarks" / "precision.py")
precision = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(precision)

SEEDS = [0, 1, 2, 3, 4, 5]
MODELS = ["a", "b", "c", "d"]


def _values(shift: float, seed: int = 0) -> dict:
    """Run means for MODELS x METRICS: fp32 and `bf16` runs drawn from one normal distribution per
    model (sd 1), bf16's moved by `shift` on every metric."""
    rng = np.random.default_rng(seed)
    values = {}
    for m, model in enumerate(MODELS):
        for metric in precision.METRICS:
            fp32, bf16 = rng.normal(10 * m, 1.0, len(SEEDS)), rng.normal(10 * m + shift, 1.0, len(SEEDS))
            values[(model, metric)] = {
                **{f"fp32-seed{s}": float(x) for s, x in zip(SEEDS, fp32)},
                **{f"bf16-seed{s}": float(x) for s, x in zip(SEEDS, bf16)},
            }
    return values


def test_a_shift_of_several_seed_spreads_is_outside():
    excess, p = precision.excess_p_value(_values(shift=4.0), SEEDS, "bf16", "kl_seq", permutations=2000)
    assert excess > 2.0 and p < 0.01
    assert "bf16: OUTSIDE" in precision.report(_values(shift=4.0), SEEDS, ["bf16"], replicate=False)


def test_the_same_distribution_is_within_most_of_the_time():
    # No shift: p is (about) uniform, so at the 5% level ~95% of the metrics come out within.
    p_values = [
        precision.excess_p_value(_values(0.0, seed), SEEDS, "bf16", metric, permutations=500)[1]
        for seed in range(10)
        for metric in precision.METRICS
    ]
    assert np.mean(np.array(p_values) >= 0.05) >= 0.8
    assert 0.2 < np.median(p_values) < 0.8


def test_the_same_runs_relabelled_lie_closer_than_two_seeds():
    # bf16 runs that are fp32's runs in another order: every pair includes the run itself (0 apart).
    values = {
        key: {**v, **{f"bf16-seed{s}": v[f"fp32-seed{SEEDS[-1 - i]}"] for i, s in enumerate(SEEDS)}}
        for key, v in _values(0.0).items()
    }
    rows = precision.gaps(values, SEEDS, ["bf16"], replicate=False)
    for metric in precision.METRICS:
        assert np.mean(rows[("bf16 vs fp32, any seeds", metric)]) < np.mean(rows[("fp32 seed to seed", metric)])
    excess, p = precision.excess_p_value(values, SEEDS, "bf16", "reward_mean", permutations=500)
    assert excess < 0 and p > 0.5


def test_a_printed_run_reads_back_to_the_same_verdict(tmp_path):
    values = _values(shift=4.0)
    lines = [
        f"{model} {metric}: " + ", ".join(f"{name} {value:.6f}" for name, value in v.items())
        for (model, metric), v in values.items()
    ]
    log = tmp_path / "precision.txt"
    log.write_text("fp32-seed0: 12s\n" + "\n".join(lines) + "\n| compared | x |\n")
    read = precision.read_log(log)
    assert read.keys() == values.keys()
    assert all(abs(read[k][name] - values[k][name]) < 1e-5 for k in values for name in values[k])
    # Each variant's lines as it finished (what a run cut by a time limit leaves) read back the same.
    lines = [
        f"{model} {metric}: {name} {value:.6f}" for (model, metric), v in values.items() for name, value in v.items()
    ]
    log.write_text("\n".join(lines))
    assert precision.read_log(log) == read
