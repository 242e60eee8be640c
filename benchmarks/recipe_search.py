"""Which on-policy recipe beats every `seed`-recipe model? Variants of the `aligned` challenger.

Each variant is the `aligned` preset (or `--config`) with some `--set` overrides that change only
the challenger (the iterative chain); its run directory starts as a hard-linked copy of a finished
run of that preset (`--base`), so the `seed` grid and its evaluations are reused, not retrained, and
only the chain is trained and evaluated (`prefalign run ... --update`). For every variant and round
it prints reward, diversity, KL, broken-text share and mean tokens (mean and std across training
seeds) and the smallest lead over the `seed` grid on each axis, net of the std the report's check
uses (`report.comparison.beats`): all three positive = the round beats every `seed` model.

    prefalign run aligned --set run_dir=runs/aligned                  # the base, once (~45 min)
    python benchmarks/recipe_search.py --base runs/aligned --out runs/search [--only NAME ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from prefalign.report.comparison import baseline_and_challengers, beats, closest_to_baseline, smallest_leads
from prefalign.report.tables import across_seeds, summarize

# name -> (what it changes, the --set overrides). `best_worst` is the `aligned` preset as shipped.
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "best_worst": ("best vs worst of each group of 4 (the preset)", []),
    "margin": ("random pairs with a reward gap above pairs.margin (1.0)", ["iterative.strategy=margin"]),
    # 4 rounds: in round 5 no sample is left below the threshold (the pairs stage stops there).
    "threshold": (
        "one text below pairs.threshold (0.05), one above",
        ["iterative.strategy=threshold", "iterative.rounds=4"],
    ),
    "random": ("random pairs, higher reward chosen", ["iterative.strategy=random"]),
    "margin-half-lr": (
        "margin pairs, half the learning rate (2.5e-5) per round, 8 rounds",
        ["iterative.strategy=margin", "iterative.dpo.learning_rate=2.5e-5", "iterative.rounds=8"],
    ),
    "margin-beta-x2": (
        "margin pairs, beta doubling every round (0.1, 0.2, 0.4, ...)",
        ["iterative.strategy=margin", "iterative.beta_growth=2"],
    ),
    "margin-beta-x1.5": (
        "margin pairs, beta x1.5 every round (0.1, 0.15, 0.225, ...), 8 rounds",
        ["iterative.strategy=margin", "iterative.beta_growth=1.5", "iterative.rounds=8"],
    ),
    # 6 rounds: in round 8 no two samples differ by more than the margin (the pairs stage stops there).
    "margin-beta-x1.25": (
        "margin pairs, beta x1.25 every round (0.1, 0.125, 0.156, ...)",
        ["iterative.strategy=margin", "iterative.beta_growth=1.25"],
    ),
    "margin-sft": (
        "margin pairs, DPO plus 0.2 x cross-entropy on the chosen text (RPO)",
        ["iterative.strategy=margin", "iterative.losses=[{types: [sigmoid, sft], weights: [1.0, 0.2]}]"],
    ),
    "margin-ld": (
        "length control: margin pairs, LD-DPO (the log-probs of the longer text's tokens past the shorter's "
        "length count half)",
        ["iterative.strategy=margin", "iterative.dpo.ld_alpha=0.5"],
    ),
    "stratified": (
        "chosen rewards spread evenly over the reward range (the original's question), on-policy",
        ["iterative.strategy=stratified"],
    ),
    "quantile": (
        "chosen from the top quarter of each round's samples, rejected from the bottom quarter",
        ["iterative.strategy=quantile"],
    ),
    "quantile-rft": (
        "rejection-sampling fine-tuning: cross-entropy on the top quarter's texts only (loss `sft`)",
        ["iterative.strategy=quantile", "iterative.losses=[sft]"],
    ),
    "margin-12k": (
        "margin pairs from 12,000 samples per round (3x): more distinct texts to choose from",
        ["iterative.strategy=margin", "iterative.samples=12000"],
    ),
    "quantile-beta-x2": (
        "quantile pairs, beta doubling every round",
        ["iterative.strategy=quantile", "iterative.beta_growth=2"],
    ),
    "quantile-beta-x1.25": (
        "quantile pairs, beta x1.25 every round",
        ["iterative.strategy=quantile", "iterative.beta_growth=1.25"],
    ),
    "bradley_terry": (
        "random pairs labelled by a Bradley-Terry rater (higher reward chosen with probability "
        "sigmoid(gap)): DPO's optimum is the original tilted by exp(reward / beta); 12 rounds",
        ["iterative.strategy=bradley_terry", "iterative.rounds=12"],
    ),
    "bradley_terry-beta0.05": (
        "the same at beta 0.05 (a sharper tilt: the original's samples reweighted by "
        "exp(reward / 0.05) have a higher mean reward); 12 rounds",
        ["iterative.strategy=bradley_terry", "iterative.betas=[0.05]", "iterative.rounds=12"],
    ),
    "bradley_terry-beta0.02": (
        "the same at beta 0.02; 12 rounds",
        ["iterative.strategy=bradley_terry", "iterative.betas=[0.02]", "iterative.rounds=12"],
    ),
    "rloo-long": (
        "no chain; RLOO (online, the classifier as reward), KL coefficient 0.02, 500 steps",
        ["iterative.rounds=0", "online.kl_coefs=[0.02]", "online.steps=500"],
    ),
}


def run_variant(config: str, base: Path, out: Path, sets: list[str]) -> float:
    """Bring `out` (a copy of `base` at first) up to `config` with `sets`; returns the seconds it took."""
    if not out.exists():
        shutil.copytree(base, out, copy_function=os.link)  # outputs are replaced by rename, never edited in place
    args = [
        sys.executable,
        "-m",
        "prefalign.cli",
        "run",
        config,
        "--update",
        "--set",
        f"run_dir={out}",
        *(f"--set={s}" for s in sets),
    ]
    start = time.time()
    with open(out / "search.log", "a") as log:
        done = subprocess.run(args, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode:
        said = [line for line in (out / "search.log").read_text().splitlines() if line.startswith("prefalign:")]
        raise RuntimeError(f"exit {done.returncode}: {said[-1] if said else 'see ' + str(out / 'search.log')}")
    return time.time() - start


def variant_summary(run_dir: Path) -> pd.DataFrame:
    """A finished variant's summary.csv rows: every model, mean and std across training seeds."""
    return across_seeds(summarize(pd.read_csv(run_dir / "results.csv")))


def chain_table(summary: pd.DataFrame) -> pd.DataFrame:
    seed_rows, chain = baseline_and_challengers(summary, "seed")
    rows = []
    for _, r in chain.iterrows():
        lead = {axis: value for axis, (value, _) in smallest_leads(r, seed_rows).items()}
        rows.append(
            {
                "model": r.model,
                "round": int(r["round"]) if np.isfinite(r["round"]) else 1,
                "reward": f"{r.reward_mean:.3f} ({r.reward_mean_sd:.3f})",
                "diversity": f"{r.diversity:.3f} ({r.diversity_sd:.3f})",
                "KL": f"{r.kl_seq:.1f} ({r.kl_seq_sd:.1f})",
                "broken": f"{r.get('broken_share', 0.0):.3f}",
                "tokens": f"{r.mean_tokens:.1f}",
                "lead reward": round(lead["reward"], 3),
                "lead diversity": round(lead["diversity"], 3),
                "lead KL": round(lead["KL"], 1),
                "beats all seed": all(beats(r, s) for _, s in seed_rows.iterrows()),
            }
        )
    return pd.DataFrame(rows)


def filtered_original(run_dir: Path, cuts=(1.5, 2.0, 2.2, 2.3)) -> pd.DataFrame:
    """What rejection sampling of the original policy would give: its samples (`samples.parquet`) above
    each reward cut, their mean reward and diversity (the evaluation's metric; fewer texts than an
    evaluation run, which biases the entropy down) and the KL of that filtered distribution from the
    original, -log(share kept), in nats per text."""
    import yaml

    from prefalign.engine.metrics import diversity
    from prefalign.models.loading import load_tokenizer

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    tokenizer = load_tokenizer(config["policy"]["model"], config["policy"].get("revision"))
    samples = pd.read_parquet(run_dir / "samples.parquet")
    rows = []
    for cut in cuts:
        kept = samples[samples.reward > cut]
        rows.append(
            {
                "reward above": cut,
                "texts": len(kept),
                "reward": round(kept.reward.mean(), 3),
                "diversity": round(diversity(kept.text.tolist(), tokenizer), 3),
                "KL": round(-np.log(len(kept) / len(samples)), 2),
                "tokens": round(kept.n_tokens.mean(), 1),
            }
        )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, type=Path, help="a finished run of --config (its seed grid is reused)")
    parser.add_argument("--out", required=True, type=Path, help="one run directory per variant is made in here")
    parser.add_argument("--config", default="aligned", help="the config every variant runs (a preset name or a file)")
    parser.add_argument(
        "--only",
        nargs="*",
        default=list(VARIANTS),
        choices=list(VARIANTS),
        help="variants to run (none: only the filtered original)",
    )
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE for every variant")
    args = parser.parse_args()
    if not (args.base / "results.csv").is_file():
        sys.exit(
            f"recipe_search: {args.base} has no results.csv: run `prefalign run {args.config} --set run_dir={args.base}` first"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 20)
    print(f"## the original's samples in {args.base}, filtered by reward (rejection sampling; no training)")
    print(filtered_original(args.base).to_string(index=False), flush=True)
    closest = {}
    for name in args.only:
        what, sets = VARIANTS[name]
        try:
            seconds = run_variant(args.config, args.base, args.out / name, [*args.set, *sets])
        except RuntimeError as e:
            print(f"\n## {name}: {what}: failed, {e}", flush=True)
            continue
        print(
            f"\n## {name}: {what} ({seconds / 60:.1f} min; --set {' '.join(args.set + sets) or '(none)'})", flush=True
        )
        summary = variant_summary(args.out / name)
        table = chain_table(summary)
        print(table.to_string(index=False), flush=True)
        # the report's rule: most `seed` models beaten, then smallest shortfall
        found = closest_to_baseline(summary, "seed")
        if found is not None:
            closest[name] = table.set_index("model").loc[found[0].model]
    if closest:
        print("\n## the model of each variant the report would name as closest to beating every `seed` model")
        print(pd.DataFrame(closest).T.rename_axis("variant").to_string(), flush=True)


if __name__ == "__main__":
    main()
