"""Command line: `prefalign run CONFIG`, one stage at a time, or helpers.

    prefalign run CONFIG [--set key.path=value ...]        every stage, resumable
    prefalign run CONFIG --num-processes N                  the same over N processes (accelerate launch)
    prefalign run CONFIG --update                           also replace outputs of the run dir's previous config
    prefalign sample|pairs|train|evaluate|report CONFIG     up to that stage
    prefalign plan CONFIG                                   what a run would do: items, keys, done or not
    prefalign config CONFIG                                 print the validated config
    prefalign config-help                                   every config key, its default and help
    prefalign build-demo [NAME] [--corpus SRC]              build (or find) the built-in models
    prefalign compare RUN_DIR RUN_DIR ... [--out DIR]       finished runs in one table and frontier plot

CONFIG is a YAML path or a preset name (`prefalign presets` lists them). Exit codes: 0 done,
1 a stage failed (model not loadable, pairs impossible, ...), 2 invalid config or arguments,
130 interrupted (Ctrl-C; rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys

from prefalign import __version__

STAGE_HELP = {
    "run": "run every stage (sample, pairs, train, evaluate, report); finished stages are skipped",
    "sample": "sample texts from the policy and score them",
    "pairs": "build chosen/rejected pairs (runs sample first if needed)",
    "train": "train one model per (strategy, loss, beta) (runs earlier stages if needed)",
    "evaluate": "evaluate the original and trained models over several seeded runs",
    "report": "write results.csv, report.md and plots",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prefalign",
        description="Align a text generator to a classifier's preferences (DPO / SLiC / IPO with TRL).",
    )
    parser.add_argument("--version", action="version", version=f"prefalign {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback behind a user-error message too, for a bug report "
                             "(or set PREFALIGN_DEBUG=1)")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in STAGE_HELP.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("config", help="YAML config path or preset name (e.g. tiny)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set train.betas=[0.1,1] (repeatable)")  # fmt: skip
        p.add_argument("--update", action="store_true",
                       help="allow redoing outputs the run directory holds for another config (without it, a run "
                            "that would replace them stops and names the keys that differ)")  # fmt: skip
        p.add_argument("--num-processes", type=int, default=1, metavar="N",
                       help="run as N processes, started through `accelerate launch` (one per GPU, or N CPU "
                            "processes): the same as `accelerate launch --num_processes N -m prefalign ...`")  # fmt: skip
    p = sub.add_parser("plan", help="list the work items of a config (stage, key, output, done or not) without running")
    p.add_argument("config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p = sub.add_parser("config", help="validate a config and print it resolved")
    p.add_argument("config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p = sub.add_parser("config-help", help="list every config key with its default and help text")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table (the README's reference)")
    p = sub.add_parser("compare", help="compare finished runs: one table and frontier plots (Markdown and HTML)")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories with a results.csv")
    p.add_argument("--out", default="compare", help="where compare.md, compare.html and plots/ go (default: ./compare)")
    sub.add_parser("presets", help="list the presets shipped with prefalign")
    p = sub.add_parser("build-demo", help="build (or find in the cache) prefalign's own offline models")
    p.add_argument("name", nargs="?", default="tiny", help="which built-in model set (default: tiny)")
    p.add_argument("--corpus", default=None,
                   help="train on another corpus: a CSV/JSONL/Parquet file with text and label columns, an "
                        "aclImdb/ folder, or a hub dataset id; prints the directory to use as policy.model "
                        "(<dir>/policy) and reward.model (<dir>/reward)")  # fmt: skip
    p.add_argument("--text-column", default="text", help="the corpus file's text column (default: text)")
    p.add_argument("--label-column", default="label", help="the corpus file's label column (default: label)")
    p.add_argument("--subset", default=None, help="the subset (configuration) of a hub dataset that has several, "
                                                   "e.g. sst2 of nyu-mll/glue")
    p.add_argument("--positive", default=None, metavar="VALUE",
                   help="the label value meaning positive, when labels are not 1/0, pos/neg, positive/negative, ... "
                        "(every other labelled value is then negative)")  # fmt: skip
    return parser


def _quiet_libraries() -> None:
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


# Failures of the machine rather than of prefalign or the input: said in one line, exit 1.
WRITE_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
                errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                errno.EROFS: "the file system is read-only"}  # fmt: skip


def _rust_errno(e: BaseException) -> int | None:
    """The errno a Rust I/O error names in its message (`... (os error 28)`), or None."""
    import re

    found = re.search(r"\(os error (\d+)\)", str(e))
    return int(found[1]) if found else None


def write_problem(e: BaseException) -> str | None:
    """A message for an output that could not be written (disk full, no permission), else None."""
    if isinstance(e, OSError) and e.errno in WRITE_ERRORS:
        what = f"cannot write {e.filename}" if e.filename else "cannot write an output"
        why = WRITE_ERRORS[e.errno]
    elif type(e).__name__ == "SafetensorError" and ("StorageFull" in str(e) or "code: 28" in str(e)
                                                    or _rust_errno(e) in WRITE_ERRORS):  # "... (os error 28)"
        what, why = "cannot save a model's weights", WRITE_ERRORS[_rust_errno(e) or errno.ENOSPC]
    else:
        return None
    needed = getattr(e, "bytes_needed", None)
    if needed and why == WRITE_ERRORS[errno.ENOSPC]:
        why += f" (the model's weights alone need {needed / 2**20:,.1f} MiB)"
    return (f"{what}: {why}. Free space or fix the permissions, then rerun the same command: finished outputs are "
            "kept, and a half-written one is never read (outputs are written under a temporary name, then renamed)")


# What torch, numpy and Python say when an allocation fails (GPU, MPS, CPU).
OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "Cannot allocate memory")


def memory_problem(e: BaseException) -> str | None:
    """A message for a run that ran out of memory (the settings ask for more than the machine has), else None."""
    if not (isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and any(s in str(e) for s in OUT_OF_MEMORY))):
        return None
    said = next((line for line in str(e).splitlines() if any(s in line for s in OUT_OF_MEMORY)), type(e).__name__)
    return (f"ran out of memory ({said.strip()[:200]}). Ask for less at once: `sampling.batch_size` (sampling and "
            "evaluation; empty sizes it from free memory), `reward.batch_size` (the classifier's batches), "
            "`train.dpo.per_device_train_batch_size` with `train.dpo.gradient_accumulation_steps` to keep the "
            "recipe's batch, fewer `train.side_by_side` workers (each holds its own models), or `train.lora`; "
            f"{RESUME}")  # fmt: skip


def package_problem(e: BaseException) -> str | None:
    """A message for a setting whose optional package is not installed (`use_liger_kernel`,
    `deepspeed`, ...: the library says so, naming it), else None."""
    said = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if not isinstance(e, ImportError) or not ("pip install" in said or "distribution was not found" in said):
        return None
    return f"a package the settings need is not installed: {said[:300]}. Install it or drop the setting; {RESUME}"


def launch_problem(processes: int, device: str) -> str | None:
    """Why `--num-processes` cannot start that many processes here, or None."""
    from prefalign.distributed import launched_processes

    if processes < 1:
        return "give 1 or more"
    if launched_processes() > 1:
        return "this process is already one of several a launcher started; drop --num-processes"
    gpus = 0
    if device in ("auto", "cuda"):
        import torch

        gpus = torch.cuda.device_count()
        if gpus and processes > gpus:
            return f"there are {gpus} GPUs here, one per process; give at most {gpus} (or set device: cpu)"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if (device == "cpu" or (device == "auto" and not gpus)) and processes > cores:
        return (f"the run is on the CPU, which has {cores} cores here: more processes than cores only slow each other "
                f"down (each loads the models); give at most {cores}")  # fmt: skip
    return None


def said(e: Exception, code: int, debug: bool) -> int:
    """A user error said in one line: print its message and return its exit code (with --debug,
    re-raise it instead, for the traceback)."""
    if debug:
        raise e
    print(f"prefalign: {e}", file=sys.stderr)
    return code


RESUME = "finished outputs are kept, rerun the same command to resume"


def first_process() -> bool:
    """Whether this is the only process, or the first of a launcher's: the one that says a run stopped."""
    return os.environ.get("RANK", "0") == "0"


@contextlib.contextmanager
def stop_on_sigterm():
    """While inside, SIGTERM (`kill`, a scheduler's time limit or preemption) ends the process at once,
    as it would by default, but with the line that says how to resume: exit 143. Training workers end
    with it (distributed.exit_with_parent); an output it was writing stays a temporary file the rerun
    clears. Only in the main thread (the one Python delivers signals to); the old handler is put back."""
    import signal
    import threading

    def stop(signum, frame) -> None:
        try:
            sys.stdout.flush()
            if first_process():
                print(f"prefalign: terminated (SIGTERM); {RESUME}", file=sys.stderr, flush=True)
        except (OSError, RuntimeError):  # a write the signal interrupted: exit without the line
            pass
        os._exit(128 + signal.SIGTERM)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def debug_asked(flag: bool) -> bool:
    """Whether tracebacks were asked for: `--debug`, or PREFALIGN_DEBUG set to anything but 0."""
    return flag or os.environ.get("PREFALIGN_DEBUG", "") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # output piped into a reader that stopped early (`prefalign plan demo | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:  # outside a run's own handler: while starting, or building the demo models
        if first_process():
            print(f"prefalign: interrupted; {RESUME}", file=sys.stderr)
        return 130
    except Exception:
        import traceback

        traceback.print_exc()
        if not debug_asked("--debug" in (sys.argv[1:] if argv is None else argv)):
            print(f"prefalign {__version__}: unexpected error, most likely a bug in prefalign (or a case it does not "
                  "handle yet); please report it with the traceback above and the command that gave it",
                  file=sys.stderr)  # fmt: skip
        return 1


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    debug = debug_asked(args.debug)
    from prefalign.configfile import ConfigError, describe, load_config, preset_names

    try:
        if args.command == "config-help":
            rows = describe()
            if args.markdown:
                print("| key | default | meaning |\n|---|---|---|")
                print("\n".join(f"| `{key}` | `{default}` | {help_text} |" for key, default, help_text in rows))
            else:
                print("\n".join(f"{key} = {default}\n    {help_text}" for key, default, help_text in rows))
            return 0
        if args.command == "compare":
            from pathlib import Path

            from prefalign.stages.compare import CompareError, compare

            _quiet_libraries()
            try:
                print(compare([Path(d) for d in args.run_dirs], Path(args.out)))
            except CompareError as e:
                return said(e, 2, debug)
            except OSError as e:  # --out on a full disk, or where it cannot be written
                message = write_problem(e)
                if message is None or debug:
                    raise
                print(f"prefalign: {message}", file=sys.stderr)
                return 1
            return 0
        if args.command == "presets":
            print("\n".join(preset_names()))
            return 0
        if args.command == "build-demo":
            from prefalign.models.builtin import SPECS, build

            _quiet_libraries()
            if args.name not in SPECS:
                print(f"prefalign: unknown built-in model set {args.name!r} (have: {', '.join(SPECS)})", file=sys.stderr)
                return 2
            spec = SPECS[args.name]
            if args.corpus:
                import dataclasses

                spec = dataclasses.replace(spec, corpus=args.corpus, text_column=args.text_column,
                                           label_column=args.label_column, positive=args.positive,
                                           subset=args.subset)  # fmt: skip
            from prefalign.models.corpus import CorpusError
            from prefalign.models.loading import ModelLoadError

            try:
                print(build(spec))
            except (CorpusError, ModelLoadError) as e:
                return said(e, 1, debug)
            return 0
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        return said(e, 2, debug)
    if args.command == "config":
        import yaml

        print(yaml.safe_dump(cfg.model_dump(), sort_keys=False), end="")
        return 0
    processes = getattr(args, "num_processes", 1)
    problem = launch_problem(processes, cfg.device) if processes != 1 else None
    if problem:
        print(f"prefalign: --num-processes {processes}: {problem}", file=sys.stderr)
        return 2

    _quiet_libraries()
    from prefalign.distributed import PeerFailed
    from prefalign.engine.lean_dpo import TrainingDiverged
    from prefalign.engine.pair_rules import PairError
    from prefalign.models.corpus import CorpusError, CorpusPathError
    from prefalign.models.loading import DeviceError, ModelLoadError, ModelPathError
    from prefalign.plan import PlanError
    from prefalign.runner import (OtherConfigsOutputs, RunDirError, RunLocked, check_parallel, check_replacements,
                                  plan_table, run)  # fmt: skip
    from prefalign.stages.evaluate import EvaluationMissing
    from prefalign.store import DamagedOutput

    # The user errors and their exit codes: 2 for bad input found before any work, 1 during it
    # (in this order: a ModelPathError is a ModelLoadError found while planning, a CorpusPathError a CorpusError).
    exit_codes = ((PlanError, 2), (RunDirError, 2), (OtherConfigsOutputs, 2), (ModelPathError, 2), (CorpusPathError, 2),
                  (DeviceError, 2), (ModelLoadError, 1), (PairError, 1), (RunLocked, 1), (EvaluationMissing, 1),
                  (TrainingDiverged, 1), (CorpusError, 1), (PeerFailed, 1), (DamagedOutput, 1))  # fmt: skip
    try:
        if args.command == "plan":
            print(plan_table(cfg))
        elif processes != 1:
            from prefalign.distributed import relaunch
            from prefalign.plan import plan

            items = plan(cfg)  # what the processes would all refuse: said once, first
            check_parallel(cfg, items, processes)
            if not args.update:
                check_replacements(cfg, items)
            again = ["--debug"] * args.debug + [args.command, args.config] + ["--update"] * args.update
            return relaunch(again + [x for o in args.overrides for x in ("--set", o)], processes)
        else:
            with stop_on_sigterm():
                run(cfg, until="report" if args.command == "run" else args.command, update=args.update)
    except KeyboardInterrupt:
        if first_process():
            print(f"prefalign: interrupted; {RESUME}", file=sys.stderr)
        return 130
    except Exception as e:
        code = next((code for kind, code in exit_codes if isinstance(e, kind)), None)
        if code is not None:
            message = f"invalid config: {e}" if isinstance(e, PlanError) else str(e)
        else:
            message, code = write_problem(e) or memory_problem(e) or package_problem(e), 1
        if message is None or debug:
            raise  # a bug (or --debug): the traceback is for the report
        print(f"prefalign: {message}", file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
