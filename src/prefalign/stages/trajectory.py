"""Scores along training (`evaluate.during_training`): a TrainerCallback that measures the model in training.

At step 0 (the start model, before the first update), every `every` optimizer steps and at the last
step, the callback samples `samples` texts from the current weights with the run's sampler under the
seed `seed` (every point draws the same prompts), scores them with the reward classifier and measures
them as an evaluation run does (stages.evaluate.run_metrics; KL against the original, from the same
log-probs, and 0 by definition for a start that is the original). Each point appends a row to
`eval/<model>/trajectory.csv` and its texts to `trajectory-texts.parquet` (step, prompt, text,
reward: what the judges and the fluency model score later, stages/judge.py), both written whole and
atomically, then `trajectory.json` (the key and the steps written). The train stages (train_dpo.py, train_rloo.py) add it to their trainers. Run with:

    prefalign train CONFIG --set "evaluate.during_training={every: 10, samples: 200}"

The model samples in eval mode under inference mode (with LoRA, with its adapters active), and the
random number generators are put back afterwards, so the training takes the same course, and ends
with the same weights, as without the points. The decode step runs eagerly (compiled, the texts would
only differ by rounding, and a compilation per training is not worth its time). A training resumed
from a checkpoint at step s keeps the rows up to step s and makes the later ones again; one whose rows
up to s are not on disk (made under other settings, or never) starts afresh (`resumes_from`). When
several processes train one model together, the main process alone has the callback: the others go on
to the next step and wait there for its gradients.
"""

from __future__ import annotations

import contextlib
import random
import time

import numpy as np
import pandas as pd
import torch
from transformers import TrainerCallback

from prefalign.engine.sample_file import sample_and_score
from prefalign.pipeline.items import Original
from prefalign.pipeline.services import Services
from prefalign.pipeline.store import atomic_path, read_json, scratch_beside, write_json, write_parquet
from prefalign.stages.evaluate import run_metrics
from prefalign.stages.sample import corpus_prompts_for

# The columns of trajectory.csv: the point, its metrics (as evaluate.run_metrics names them), its wall time.
COLUMNS = (
    "step",
    "epoch",
    "reward_mean",
    "kl_seq",
    "kl_token",
    "diversity",
    "distinct_2",
    "broken_share",
    "positive_rate",
    "mean_tokens",
    "seconds",
)
# The columns of trajectory-texts.parquet (`prompt` only with prompts), one row per text of every point.
TEXT_COLUMNS = ("step", "prompt", "text", "reward")


def trajectory_callbacks(item, services: Services) -> list:
    """[TrajectoryPoints] for a trained model with evaluate.during_training, in the process that
    samples (the main one); else []."""
    if item.trajectory is None or not services.ranks.main:
        return []
    return [TrajectoryPoints(item, services)]


@contextlib.contextmanager
def random_state_kept(device: torch.device):
    """Put the random number generators (torch's on the CPU and on `device`, numpy's, Python's)
    back as they were when the block ends."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


class TrajectoryPoints(TrainerCallback):
    """One row of trajectory.csv at step 0, every `every` steps and at the last step of a training."""

    def __init__(self, item, services: Services):
        self.trajectory, self.key, self.name = item.trajectory, item.trajectory.key(item.key), item.name
        self.services = services
        # The start's KL to the original: 0 by definition when the start is the original (as evaluate says).
        self.start_is_original = isinstance(item.start, Original)
        self.tokenizer = services.policy_tokenizer(item.start.ref, item.start.revision)
        self.sampling = item.trajectory.sampling.model_copy(update={"compile_step": "eager"})
        self.prompts = corpus_prompts_for(self.sampling, self.tokenizer, item.trajectory.samples, item.trajectory.seed)
        self.rows: list[dict] = []
        self.texts: list[pd.DataFrame] = []  # one per row: that point's texts (TEXT_COLUMNS)

    def stored_rows(self) -> tuple[list[dict], pd.DataFrame | None]:
        """The rows and texts on disk, when trajectory.json says they were made under this key; else none."""
        meta = read_json(self.trajectory.meta)
        if meta is None or meta.get("key") != self.key:
            return [], None
        try:
            return pd.read_csv(self.trajectory.path).to_dict("records"), pd.read_parquet(self.trajectory.texts)
        except (OSError, ValueError):  # missing or damaged: the points are made again
            return [], None

    def resumes_from(self, step: int) -> bool:
        """Whether a training resumed at `step` finds on disk the row of every point up to it."""
        have = {int(row["step"]) for row in self.stored_rows()[0]}
        return {0, *range(self.trajectory.every, step + 1, self.trajectory.every)} <= have

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0:
            self.rows, self.texts = [], []
            self.point(model, state)
        else:  # resumed from a checkpoint: the rows of later steps are made again
            rows, texts = self.stored_rows()
            self.rows = [row for row in rows if row["step"] <= state.global_step]
            self.texts = [texts[texts.step == row["step"]] for row in self.rows]
            self.write()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.trajectory.every == 0 or state.global_step == state.max_steps:
            self.point(model, state)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if not self.rows or self.rows[-1]["step"] != state.global_step:  # a training that stopped early
            self.point(model, state)

    def point(self, model, state) -> None:
        """Measure the model at this step, add its row and write the trajectory."""
        started = time.time()
        metrics, texts = self.measure(model, at_start=state.global_step == 0)
        row = {"step": state.global_step, "epoch": round(float(state.epoch or 0.0), 4)}
        row.update({column: metrics[column] for column in COLUMNS[2:-1]})
        row["seconds"] = round(time.time() - started, 2)
        self.rows.append(row)
        texts = texts.assign(step=state.global_step)
        self.texts.append(texts[[column for column in TEXT_COLUMNS if column in texts.columns]])
        self.write()
        self.services.log(
            f"  step {state.global_step}/{state.max_steps} point: reward {row['reward_mean']:.3f}, "
            f"KL {row['kl_seq']:.3f}, diversity {row['diversity']:.3f} ({row['seconds']:.1f}s)"
        )

    def measure(self, model, at_start: bool) -> tuple[dict, pd.DataFrame]:
        """run_metrics of `samples` texts of the model as it is now, and the texts (as sample_and_score
        gives them); its training mode is left as it was."""
        services, trajectory = self.services, self.trajectory
        reference = None if at_start and self.start_is_original else services.reference_policy()
        # With LoRA the model is peft's wrapper: its base model holds the adapters, active.
        policy = model.get_base_model() if hasattr(model, "get_base_model") else model
        scratch = scratch_beside(trajectory.path, "texts")
        was_training = model.training
        model.eval()
        try:
            with random_state_kept(next(policy.parameters()).device):
                df = sample_and_score(
                    policy,
                    self.tokenizer,
                    None,
                    None,
                    None,
                    trajectory.samples,
                    self.sampling,
                    trajectory.seed,
                    None,
                    scratch,
                    desc=f"{self.name} point",
                    prompts=self.prompts,
                    reference=reference,
                    scorer=services.reward_scorer(),
                )
        finally:
            model.train(was_training)
            scratch.unlink(missing_ok=True)
        metrics = run_metrics(df, self.tokenizer, thresholds=())
        if reference is None:
            metrics.update(kl_seq=0.0, kl_token=0.0)
        return metrics, df

    def write(self) -> None:
        """trajectory-texts.parquet and trajectory.csv (every point so far), then trajectory.json (the
        key and the steps written)."""
        texts = pd.concat(self.texts, ignore_index=True) if self.texts else pd.DataFrame(columns=["step", "text"])
        write_parquet(texts, self.trajectory.texts)
        with atomic_path(self.trajectory.path) as tmp:
            pd.DataFrame(self.rows, columns=list(COLUMNS)).to_csv(tmp, index=False)
        trajectory = self.trajectory
        write_json(
            trajectory.meta,
            {
                "key": self.key,
                "model": self.name,
                "every": trajectory.every,
                "samples": trajectory.samples,
                "seed": trajectory.seed,
                "steps": [int(row["step"]) for row in self.rows],
            },
        )
