"""Tables and plots from the evaluation runs: the `report` stage.

Writes `results.csv` (one row per model x evaluation run), `report.md` with the original
experiment's table shape (per pair strategy: the original model, then loss x beta; cells are
mean (std across runs)), and per strategy a PNG overlaying the reward distributions of the original
and each trained model, pooled over runs. Run with:

    prefalign report CONFIG
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from prefalign.store import read_json, write_text

RESULT_COLUMNS = ["model", "strategy", "loss", "beta", "recipe", "run", "reward_mean", "reward_std", "diversity",
                  "positive_rate", "mean_tokens"]  # fmt: skip


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and std across runs of every metric, one row per model (original first, grid order kept)."""
    metrics = ["reward_mean", "reward_std", "diversity", "positive_rate", "mean_tokens"]
    keys = ["model", "strategy", "loss", "beta", "recipe"]
    g = results.fillna({"beta": -1.0}).groupby(keys, sort=False)[metrics]
    out = g.mean().join(g.std(ddof=1), rsuffix="_sd").reset_index()
    out["runs"] = g.size().to_numpy()
    out["beta"] = out["beta"].replace(-1.0, np.nan)
    return out


def _cell(mean: float, sd: float) -> str:
    return f"{mean:.3f} ({sd:.3f})" if np.isfinite(sd) else f"{mean:.3f}"


def strategy_table(summary: pd.DataFrame, strategy: str) -> str:
    rows = [summary[summary.model == "original"], summary[summary.strategy == strategy]]
    lines = ["| model | reward | diversity | positive rate | mean length |", "|---|---|---|---|---|"]
    for _, r in pd.concat(rows).iterrows():
        label = "original model" if r.model == "original" else f"{r.loss} {r.beta:g}"
        lines.append(f"| {label} | {_cell(r.reward_mean, r.reward_mean_sd)} | {_cell(r.diversity, r.diversity_sd)} | "
                     f"{_cell(r.positive_rate, r.positive_rate_sd)} | {r.mean_tokens:.1f} |")  # fmt: skip
    return "\n".join(lines)


def plot_rewards(run_root: Path, models: list[str], title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rewards = {}
    for m in models:
        files = sorted((run_root / "eval" / m).glob("run-*.parquet"))
        rewards[m] = np.concatenate([pd.read_parquet(f, columns=["reward"])["reward"].to_numpy() for f in files])
    lo = min(float(np.percentile(r, 0.5)) for r in rewards.values())
    hi = max(float(np.percentile(r, 99.5)) for r in rewards.values())
    bins = np.linspace(lo, hi, 60)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for m, r in rewards.items():
        style = dict(color="black", linewidth=2.0) if m == "original" else dict(linewidth=1.3)
        ax.hist(r, bins=bins, density=True, histtype="step", label=m, **style)
    ax.set_xlabel("reward (positive-class logit)")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out)


def write_report(run, results: pd.DataFrame) -> None:
    root, cfg = run.root, run.cfg
    tmp = root / ".results.csv.tmp"
    results[RESULT_COLUMNS].to_csv(tmp, index=False)
    tmp.replace(root / "results.csv")
    summary = summarize(results)
    models = read_json(root / "models.json") or {}
    samples_meta = read_json(root / "samples.meta.json") or {}

    md = [f"# prefalign report: {cfg.name}", "",
          f"Generated {time.strftime('%Y-%m-%d %H:%M')} from `{root}`. Rewards are the classifier's "
          f"`{cfg.reward.positive_label}` logit; diversity is the entropy (nats) of the unigram distribution of "
          "policy token ids over each run's texts; positive rate is the share of texts the classifier labels "
          f"positive. Cells: mean (std across {cfg.evaluate.runs} runs of {cfg.evaluate.samples} samples).", "",
          "## Models", "",
          f"- policy: `{models.get('policy', {}).get('ref', cfg.policy.model)}`"
          + (f" (held-out perplexity {models['policy']['perplexity']:.1f})" if "perplexity" in models.get("policy", {}) else ""),
          f"- reward model: `{models.get('reward_model', {}).get('ref', cfg.reward.model)}`"
          + (f" (held-out accuracy {models['reward_model']['accuracy']:.3f})" if "accuracy" in models.get("reward_model", {}) else ""),
          f"- training recipe: `{cfg.train.recipe}`" + (f", overrides {cfg.train.dpo}" if cfg.train.dpo else ""),
          f"- pair samples: {samples_meta.get('samples', '?')} texts, mean reward {samples_meta.get('reward_mean', float('nan')):.3f}",
          ""]  # fmt: skip
    for strategy in cfg.pairs.strategies:
        pmeta = read_json(root / "pairs" / f"{strategy}.meta.json") or {}
        rule = {"margin": f", gap > {cfg.pairs.margin:g}", "threshold": f", split at {cfg.pairs.threshold:g}"}.get(strategy, "")
        png = Path("plots") / f"rewards-{strategy}.png"
        names = ["original"] + [m for m in summary.model if m != "original" and m.startswith(f"{strategy}-")]
        plot_rewards(root, names, f"reward distributions, {strategy} pairs", root / png)
        md += [f"## Pairs: {strategy}{rule}", "",
               f"{pmeta.get('pairs', '?')} pairs, mean reward gap {pmeta.get('mean_gap', float('nan')):.3f} "
               f"(chosen {pmeta.get('chosen_reward_mean', float('nan')):.3f}, rejected "
               f"{pmeta.get('rejected_reward_mean', float('nan')):.3f}).", "",
               strategy_table(summary, strategy), "", f"![reward distributions, {strategy} pairs]({png.as_posix()})", ""]  # fmt: skip

    md += ["## Training", "", "| model | pairs | seconds | pairs/s | final loss |", "|---|---|---|---|---|"]
    for point in run.grid():
        info = read_json(run.model_dir(point) / "train.json") or {}
        losses = [h["loss"] for h in info.get("log_history", []) if "loss" in h]
        md.append(f"| {point.name} | {info.get('pairs', '?')} | {info.get('train_seconds', '?')} | "
                  f"{info.get('pairs_per_second', '?')} | {losses[-1] if losses else float('nan'):.4f} |")  # fmt: skip

    md += ["", "## Example texts (evaluation run 0)", ""]
    for name in summary.model:
        df = pd.read_parquet(root / "eval" / name / "run-00.parquet", columns=["text", "reward"]).head(3)
        md += [f"**{name}**", ""] + [f"- ({r.reward:+.2f}) {r.text.strip()!r}" for r in df.itertuples()] + [""]
    md += ["Per-run numbers: [results.csv](results.csv).", ""]
    write_text(root / "report.md", "\n".join(md))
