"""A run's log lines and the libraries' own output: what every process sets up first.

Free of torch: the CLI quiets the libraries before it imports them.
"""

from __future__ import annotations

import os
import sys
import time


def quiet_libraries() -> None:
    """Keep the log to prefalign's own lines plus training progress; PREFALIGN_VERBOSE=1 restores all."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if os.environ.get("PREFALIGN_VERBOSE"):
        return
    import warnings

    # transformers 5 deprecation notices about arguments TRL itself passes; nothing a user can act on.
    warnings.filterwarnings("ignore", category=FutureWarning)
    # multiprocessing's resource tracker (a process of its own, reading PYTHONWARNINGS) counts "leaked
    # semaphores" after Ctrl-C ends the training workers: their pool's queues, freed with the tracker.
    quiet_tracker = "ignore:resource_tracker:UserWarning"
    if quiet_tracker not in os.environ.get("PYTHONWARNINGS", ""):
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), quiet_tracker]))
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    if not sys.stderr.isatty():
        # Logs to a file: TRL's reference pre-pass draws a bar whatever the terminal (prefalign's own
        # bars already hide themselves off a terminal), one carriage-return line per batch.
        os.environ.setdefault("TQDM_DISABLE", "1")


def process_tag() -> str:
    """` 1/4` in the log of process 1 of 4 (and of the workers it starts), nothing in a one-process run."""
    from prefalign.pipeline.distributed import launched_processes

    if "PREFALIGN_PROCESS" in os.environ:
        return f" {os.environ['PREFALIGN_PROCESS']}"
    return f" {os.environ.get('RANK', '?')}/{launched_processes()}" if launched_processes() > 1 else ""


def log(msg: str) -> None:
    print(f"[prefalign{process_tag()} {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def quiet(msg: str) -> None:
    """The log of a process other than the main one, where the main process says the same."""
