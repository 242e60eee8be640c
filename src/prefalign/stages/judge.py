"""Judges and fluency (`TextScores` items): score texts already sampled with a model nobody trained on.

A judge (`evaluate.judges`) is a classifier other than the reward: its positive logit of the same
texts shows whether a reward gain is real or hacked (word salad that fools the reward classifier
should fool a differently trained one less). The fluency scorer (`evaluate.fluency`) is a causal
LM other than the policy: a text's fluency is its mean per-token log-probability under it
(engine/fluency.py), low for word salad and broken bytes whatever a classifier says.

Both read what the evaluation wrote (an Evaluation's run-<k>.parquet, a BestOfN's
run-<k>-choices.parquet) and score the text as the reward classifier read it (prompt + completion).
Per run: `run-<k>.parquet` (one score per text, in the source's row order) and then `run-<k>.json`
(its key and metrics: judge_<name>_reward_mean / _reward_std / _positive_rate, or fluency /
fluency_low_share). For a BestOfN, metrics per N under `per_n`; a text chosen for several N is
scored once. A TrajectoryScores reads a trained model's trajectory-texts.parquet (the training-curve
points' texts, stages/trajectory.py) and writes `trajectory.csv` (a row per point: step and the same
metrics) and then `trajectory.json` (its key). The main process does it all.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from prefalign.engine.scoring import score_texts
from prefalign.pipeline.evidence_items import BestOfN, FluencyScorer, Judge, TextScores, TrajectoryScores
from prefalign.pipeline.items import Evaluation
from prefalign.pipeline.services import Services
from prefalign.pipeline.store import atomic_path, read_json, read_parquet, write_json, write_parquet
from prefalign.stages.evaluate import EvaluationMissing, stored_runs


def score_stage(item: TextScores, services: Services) -> None:
    """Every run of `item` whose key is not on disk."""
    todo = [k for k in range(item.runs) if not item.run_done(k)]
    if not todo:
        return
    services.log(f"{item.name}: {len(todo)} run(s)")
    for k in todo:
        texts = source_texts(item, k)
        unique = texts.drop_duplicates("key")
        scored = _score(item.scorer, unique["full"].tolist(), services)
        scores = texts[["key"]].merge(pd.DataFrame({"key": unique["key"].to_numpy(), **scored}), on="key", how="left")
        scores = scores.drop(columns="key")
        write_parquet(scores, item.run_path(k, ".parquet"))
        if isinstance(item.source, BestOfN):
            by_n = {str(int(n)): metrics_of(item.scorer, part) for n, part in scores.groupby(texts["n"].to_numpy())}
            write_json(item.run_path(k, ".json"), {"key": item.run_key(k), "run": k, "per_n": by_n})
        else:
            write_json(item.run_path(k, ".json"), {"key": item.run_key(k), "run": k, **metrics_of(item.scorer, scores)})


def trajectory_stage(item: TrajectoryScores, services: Services) -> None:
    """Score the texts of every training-curve point of `item.model`; a row per point."""
    trajectory = item.model.trajectory
    stored = read_json(trajectory.meta)
    if stored is None or stored.get("key") != item.trajectory_key or not trajectory.texts.exists():
        raise EvaluationMissing(
            f"the training curve of {item.model.name} is missing or stale; run `prefalign train` first"
        )
    services.log(f"{item.name}: {len(stored['steps'])} point(s)")
    texts = as_read(read_parquet(trajectory.texts), item.scorer, by="step")
    scores = pd.DataFrame(_score(item.scorer, texts["full"].tolist(), services))
    rows = [
        {"step": int(step), **metrics_of(item.scorer, part)} for step, part in scores.groupby(texts["step"].to_numpy())
    ]
    with atomic_path(item.path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    write_json(item.meta, {"key": item.key, "model": item.model.name, "steps": [row["step"] for row in rows]})


def source_texts(item: TextScores, k: int) -> pd.DataFrame:
    """Run k's texts: `full` (what the classifier read: prompt + completion), `key` (one per distinct
    text of the source: a BestOfN text chosen for several N shares it) and, for a BestOfN, `n`.
    The fluency scorer keeps the first `samples` texts (of each N)."""
    if isinstance(item.source, Evaluation):
        df = read_parquet(item.source.run_path(k, ".parquet"))
        df["key"] = np.arange(len(df))
    else:
        df = read_parquet(item.source.run_path(k, "-choices.parquet"))
        df["key"] = df["draw"].to_numpy() * (df["row"].max() + 1) + df["row"].to_numpy()
    df = as_read(df, item.scorer, by="n" if "n" in df.columns else None)
    return df[[c for c in ("full", "key", "n") if c in df.columns]]


def as_read(df: pd.DataFrame, scorer: Judge | FluencyScorer, by: str | None) -> pd.DataFrame:
    """`df` with `full`, what the classifier read (prompt + completion), cut to the fluency scorer's
    first `samples` texts (of each `by` group: a best-of-N's N, a training curve's step)."""
    df = df.assign(full=df["prompt"] + df["text"] if "prompt" in df.columns else df["text"])
    limit = getattr(scorer, "samples", None)
    if limit is not None:
        df = df.groupby(by, sort=False).head(limit) if by else df.head(limit)
    return df.reset_index(drop=True)


def _score(scorer: Judge | FluencyScorer, texts: list[str], services: Services) -> dict[str, np.ndarray]:
    if isinstance(scorer, FluencyScorer):
        from prefalign.engine.fluency import fluency_scores

        model, tokenizer = services.fluency_model(scorer)
        return {"fluency": fluency_scores(texts, model, tokenizer)}
    judge = services.judge(scorer)
    scored = score_texts(texts, judge.model, judge.tokenizer, judge.positive_index, services.reward_batch_size)
    return {"reward": scored["reward"], "is_positive": scored["is_positive"]}


def metrics_of(scorer: Judge | FluencyScorer, scores: pd.DataFrame) -> dict[str, float]:
    """One run's metrics from its scores (columns `reward`, `is_positive` or `fluency`)."""
    if isinstance(scorer, FluencyScorer):
        fluency = scores["fluency"].to_numpy(dtype=np.float64)
        scored = fluency[~np.isnan(fluency)]  # an empty text has no fluency
        return {
            "fluency": float(scored.mean()) if len(scored) else float("nan"),
            "fluency_low_share": float((scored < scorer.threshold).mean()) if len(scored) else float("nan"),
        }
    prefix, reward = f"judge_{scorer.name}_", scores["reward"].to_numpy(dtype=np.float64)
    return {
        prefix + "reward_mean": float(reward.mean()),
        prefix + "reward_std": float(reward.std(ddof=1)) if len(reward) > 1 else 0.0,
        prefix + "positive_rate": float(scores["is_positive"].mean()),
    }


def stored_scores(item: TextScores) -> list[dict]:
    """Each run's stored metrics (for a BestOfN: {N: metrics}); raises EvaluationMissing if stale."""
    return [
        run.get("per_n") or {m: v for m, v in run.items() if m not in ("key", "run")}
        for run in stored_runs(item, item.name)
    ]
