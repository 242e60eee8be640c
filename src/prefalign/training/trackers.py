"""Experiment trackers (`train.report_to`): what sends a training's logged metrics to TensorBoard
or Trackio, with the logs kept in the run directory.

The trainers (DPO, iterative rounds, RLOO) log through the Trainer's own integrations; this module
only says which ones, names the run after the model and points the logs at RUN_DIR/logs/:

    RUN_DIR/logs/tensorboard/<model>/   event files   (tensorboard --logdir RUN_DIR/logs/tensorboard)
    RUN_DIR/logs/trackio/               Trackio's local database, project = the config's `name`
                                        (TRACKIO_DIR=RUN_DIR/logs/trackio trackio show --project NAME)

Nothing here changes what is trained, so it is not part of any model's key.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

# Tracker name -> the module the Trainer's integration imports (what `pip install` must provide).
TRACKERS = {"tensorboard": "tensorboard", "trackio": "trackio"}
TRACKER_NAMES = tuple(TRACKERS)
# The Trainer fields that `reporting` sets or that would redirect the logs it places: a config's
# train.dpo / online.rloo may not set them (train.report_to does).
TRACKER_FIELDS = {"report_to", "run_name", "project", "logging_dir", "trackio_space_id", "trackio_static_space_id"}


def missing_trackers(names: list[str]) -> list[str]:
    """The trackers among `names` whose package is not installed."""
    return [n for n in names if importlib.util.find_spec(TRACKERS[n]) is None]


@dataclass(frozen=True)
class Tracking:
    """Where one run's trainers report: `report_to` (names from TRACKERS; empty: nowhere)."""

    report_to: tuple[str, ...] = ()
    logs_dir: Path | None = None  # RUN_DIR/logs
    project: str = "prefalign"  # Trackio's project: the config's `name`

    def tensorboard_dir(self, model_name: str) -> Path:
        return Path(self.logs_dir) / "tensorboard" / model_name


@contextlib.contextmanager
def reporting(tracking: Tracking, model_name: str, fresh: bool = True):
    """Yield the TrainingArguments fields that make a trainer report to `tracking.report_to`, with
    the environment the integrations read set meanwhile. `fresh`: the training starts from step 0
    (not from a checkpoint), so the model's earlier TensorBoard events are cleared first."""
    if not tracking.report_to:
        yield {"report_to": "none"}
        return
    settings = {"report_to": list(tracking.report_to), "run_name": model_name}
    env = {}
    if "tensorboard" in tracking.report_to:
        events = tracking.tensorboard_dir(model_name)
        if fresh:
            shutil.rmtree(events, ignore_errors=True)
        env["TENSORBOARD_LOGGING_DIR"] = str(events)
    if "trackio" in tracking.report_to:
        # Local only: no Space is created or synced to the Hub after training.
        settings.update(project=tracking.project, trackio_space_id=None, trackio_static_space_id=False)
        env["TRACKIO_DIR"] = str(Path(tracking.logs_dir) / "trackio")
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield settings
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
