"""What a DPO training tells while it runs: one log line per logging step, and the wall times of
its start, its first step and its end, so train.json can tell one-off costs from the per-step rate."""

from __future__ import annotations

import time

from transformers import TrainerCallback


class LogLine(TrainerCallback):
    """One short line per logging step (loss, reward accuracy, margin) instead of the Trainer's metric dicts."""

    def __init__(self, log):
        self.log = log

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            acc = logs.get("rewards/accuracies", float("nan"))
            self.log(
                f"  step {state.global_step}/{state.max_steps}: loss {float(logs['loss']):.4f}, "
                f"reward accuracy {float(acc):.2f}, margin {float(logs.get('rewards/margins', float('nan'))):.3f}"
            )


class StepClock(TrainerCallback):
    """Wall times of the training's start, the end of its first step (compilation happens there) and
    its end."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.begin, self.first, self.first_step = time.time(), None, state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        if self.first is None:
            self.first, self.first_step = time.time(), state.global_step

    def on_train_end(self, args, state, control, **kwargs):
        self.end, self.last_step = time.time(), state.global_step

    def timings(self, t0: float, pairs_per_step: int) -> dict:
        """train.json's timing fields for a training whose trainer was made at `t0`: the trainer's
        construction (the reference pre-pass included), the first step (compilation included), and
        the rate of the steps after it (`pairs_per_step`: over every process)."""
        steady = None
        if self.first and self.end > self.first:
            steady = round(pairs_per_step * (self.last_step - self.first_step) / (self.end - self.first), 2)
        return {
            "setup_seconds": round(self.begin - t0, 2),
            "first_step_seconds": round((self.first or self.end) - self.begin, 2),
            "steady_pairs_per_second": steady,
        }
