"""Command line: `prefalign run CONFIG`, one stage at a time, or helpers.

    prefalign run CONFIG [--set key.path=value ...]        every stage, resumable
    prefalign run CONFIG --num-processes N                  the same over N processes (accelerate launch)
    prefalign run CONFIG --update                           also replace outputs of the run dir's previous config
    prefalign sample|pairs|train|evaluate|report CONFIG     up to that stage
    prefalign plan CONFIG                                   what a run would do: items, keys, done or not
    prefalign config CONFIG                                 print the validated config
    prefalign config-help                                   every config key, its default and help
    prefalign presets                                       the presets: what each runs, its time on 2 CPU cores
    prefalign build-demo [NAME] [--corpus SRC]              build (or find) the built-in models
    prefalign compare RUN_DIR RUN_DIR ... [--out DIR]       finished runs in one table and frontier plot

CONFIG is a YAML path or a preset name (`prefalign presets` lists them). Exit codes: 0 done,
1 a stage failed (model not loadable, pairs impossible, ...), 2 invalid config or arguments,
130 interrupted (Ctrl-C; rerun the same command to resume). Each command's --help ends with an
example. The same from Python, with the same messages as exceptions: prefalign/api.py.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback

from prefalign import __version__
from prefalign.errors import RESUME, PrefalignError, outside_problem
from prefalign.pipeline.logs import quiet_libraries


class UsageError(PrefalignError):
    """Arguments of a command that cannot work together (found before any work)."""

    exit_code = 2


# Each command: its one line (in `prefalign --help` and atop its own --help) and an example.
STAGE_HELP = {
    "run": (
        "run every stage (sample, pairs, train, evaluate, report); finished stages are skipped",
        "prefalign run tiny --set run_dir=/tmp/tiny",
    ),
    "sample": ("sample texts from the policy and score them", "prefalign sample demo --set sampling.num_samples=500"),
    "pairs": ("build chosen/rejected pairs (runs sample first if needed)", "prefalign pairs tiny"),
    "train": (
        "train one model per (strategy, loss, beta) (runs earlier stages if needed)",
        "prefalign train demo --set train.betas=[0.1]",
    ),
    "evaluate": (
        "evaluate the original and trained models over several seeded runs",
        "prefalign evaluate tiny --set evaluate.runs=3",
    ),
    "report": ("write results.csv, report.md and plots", "prefalign report tiny"),
}
CONFIG_COMMANDS = {
    "plan": (
        "list the work items of a config (stage, key, output, done or not) without running",
        "prefalign plan demo --set train.betas=[0.1,1]",
    ),
    "config": ("validate a config and print it resolved", "prefalign config tiny --set sampling.top_k=10"),
}


def _command(sub, name: str, help_text: str, example: str) -> argparse.ArgumentParser:
    """A subcommand whose --help starts with its one line and ends with its example."""
    return sub.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prefalign",
        description="Align a text generator to a classifier's preferences (DPO / SLiC / IPO with TRL).",
        epilog="examples:\n  prefalign presets\n  prefalign run tiny\n  prefalign run demo --set train.betas=[0.1]\n"
        "  prefalign COMMAND --help",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"prefalign {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the Python traceback behind a user-error message too, for a bug report (or set PREFALIGN_DEBUG=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, example) in STAGE_HELP.items():
        _add_stage_command(_command(sub, name, help_text, example))
    for name, (help_text, example) in CONFIG_COMMANDS.items():
        p = _command(sub, name, help_text, example)
        p.add_argument("config", help="YAML config path or preset name (e.g. tiny)")
        _add_overrides(p)
    _add_helper_commands(sub)
    return parser


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.betas=[0.1,1] (repeatable)",
    )


def _add_stage_command(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config path or preset name (e.g. tiny)")
    _add_overrides(p)
    p.add_argument(
        "--update",
        action="store_true",
        help="allow redoing outputs the run directory holds for another config (without it, a run "
        "that would replace them stops and names the keys that differ)",
    )
    p.add_argument(
        "--num-processes",
        type=int,
        default=1,
        metavar="N",
        help="run as N processes, started through `accelerate launch` (one per GPU, or N CPU "
        "processes): the same as `accelerate launch --num_processes N -m prefalign ...`",
    )


def _add_helper_commands(sub) -> None:
    """The commands that read no experiment config (HELPER_COMMANDS)."""
    p = _command(
        sub, "config-help", "list every config key with its default and help text", "prefalign config-help --markdown"
    )
    p.add_argument("--markdown", action="store_true", help="print a Markdown table (docs/config.md)")
    p = _command(
        sub,
        "compare",
        "compare finished runs: one table and frontier plots (Markdown and HTML)",
        "prefalign compare runs/demo runs/frontier --out compare",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories with a results.csv")
    p.add_argument("--out", default="compare", help="where compare.md, compare.html and plots/ go (default: ./compare)")
    _command(
        sub,
        "presets",
        "list the presets shipped with prefalign: name, what each runs, its time on 2 CPU cores",
        "prefalign presets",
    )
    p = _command(
        sub,
        "build-demo",
        "build (or find in the cache) prefalign's own offline models",
        "prefalign build-demo demo",
    )
    p.add_argument("name", nargs="?", default="tiny", help="which built-in model set (default: tiny)")
    p.add_argument(
        "--corpus",
        default=None,
        help="train on another corpus: a CSV/JSONL/Parquet file with text and label columns, an "
        "aclImdb/ folder, or a hub dataset id; prints the directory to use as policy.model "
        "(<dir>/policy) and reward.model (<dir>/reward)",
    )
    p.add_argument("--text-column", default="text", help="the corpus file's text column (default: text)")
    p.add_argument("--label-column", default="label", help="the corpus file's label column (default: label)")
    p.add_argument(
        "--subset",
        default=None,
        help="the subset (configuration) of a hub dataset that has several, e.g. sst2 of nyu-mll/glue",
    )
    p.add_argument(
        "--positive",
        default=None,
        metavar="VALUE",
        help="the label value meaning positive, when labels are not 1/0, pos/neg, positive/negative, ... "
        "(every other labelled value is then negative)",
    )


def launch_problem(processes: int, device: str) -> str | None:
    """Why `--num-processes` cannot start that many processes here, or None."""
    from prefalign.pipeline.distributed import launched_processes

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
        return (
            f"the run is on the CPU, which has {cores} cores here: more processes than cores only slow each other "
            f"down (each loads the models); give at most {cores}"
        )
    return None


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
    """The `prefalign` command: every failure a user can act on is one line and an exit code
    (PrefalignError's, or 1 for a full disk, no memory or a missing package); anything else is a
    bug and shows its traceback."""
    debug = debug_asked("--debug" in (sys.argv[1:] if argv is None else argv))
    try:
        return _main(argv)
    except BrokenPipeError:  # output piped into a reader that stopped early (`prefalign plan demo | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        if first_process():
            print(f"prefalign: interrupted; {RESUME}", file=sys.stderr)
        return 130
    except PrefalignError as e:
        return _say(e, e.said(), e.exit_code, debug)
    except Exception as e:
        message = outside_problem(e)
        if message is not None:
            return _say(e, message, 1, debug)
        traceback.print_exc()
        if not debug:
            print(
                f"prefalign {__version__}: unexpected error, most likely a bug in prefalign (or a case it does not "
                "handle yet); please report it with the traceback above and the command that gave it",
                file=sys.stderr,
            )
        return 1


def _say(e: BaseException, message: str, code: int, debug: bool) -> int:
    """Print a failure's one line (after its traceback with --debug) and return its exit code."""
    if debug:
        traceback.print_exception(e)
    print(f"prefalign: {message}", file=sys.stderr)
    return code


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command in HELPER_COMMANDS:
        return HELPER_COMMANDS[args.command](args)
    from prefalign.config.loader import load_config

    cfg = load_config(args.config, args.overrides)
    if args.command == "config":
        import yaml

        print(yaml.safe_dump(cfg.model_dump(), sort_keys=False), end="")
        return 0
    processes = getattr(args, "num_processes", 1)
    problem = launch_problem(processes, cfg.device) if processes != 1 else None
    if problem:
        raise UsageError(f"--num-processes {processes}: {problem}")
    quiet_libraries()
    if args.command == "plan":
        from prefalign.pipeline.runner import plan_table

        print(plan_table(cfg))
        return 0
    if processes != 1:
        return _relaunch(args, cfg, processes)
    from prefalign.pipeline.runner import run

    with stop_on_sigterm():
        run(cfg, until="report" if args.command == "run" else args.command, update=args.update)
    return 0


def _relaunch(args: argparse.Namespace, cfg, processes: int) -> int:
    """Check once what every process would refuse, then start `processes` of them (accelerate launch)."""
    from prefalign.pipeline.distributed import relaunch
    from prefalign.pipeline.plan import check_pairs_on_disk, plan
    from prefalign.pipeline.provenance import check_replacements
    from prefalign.pipeline.runner import check_parallel

    items = plan(cfg)
    check_parallel(cfg, items, processes)
    if not args.update:
        check_replacements(cfg, items)
    check_pairs_on_disk(items)
    again = ["--debug"] * args.debug + [args.command, args.config] + ["--update"] * args.update
    return relaunch(again + [x for o in args.overrides for x in ("--set", o)], processes)


def _config_help(args: argparse.Namespace) -> int:
    from prefalign.config.loader import describe

    rows = describe()
    if args.markdown:
        print("| key | default | meaning |\n|---|---|---|")
        print("\n".join(f"| `{key}` | `{default}` | {help_text} |" for key, default, help_text in rows))
    else:
        print("\n".join(f"{key} = {default}\n    {help_text}" for key, default, help_text in rows))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from prefalign.report.compare import compare

    quiet_libraries()
    print(compare([Path(d) for d in args.run_dirs], Path(args.out)))
    return 0


def _presets(args: argparse.Namespace) -> int:
    from prefalign.config.loader import preset_descriptions

    presets = preset_descriptions()
    width = max(map(len, presets))
    print("\n".join(f"{name:<{width}}  {about}".rstrip() for name, about in presets.items()))
    return 0


def _build_demo(args: argparse.Namespace) -> int:
    import dataclasses

    from prefalign.models.specs import SPECS, BuildSpec

    if args.name not in SPECS:
        raise UsageError(f"unknown built-in model set {args.name!r} (have: {', '.join(SPECS)})")
    spec = SPECS[args.name]
    if args.corpus and not isinstance(spec, BuildSpec):
        raise UsageError(f"{args.name} is converted from a package, not trained: --corpus does not apply")
    quiet_libraries()
    from prefalign.models.builtin import build

    if args.corpus:
        spec = dataclasses.replace(
            spec,
            corpus=args.corpus,
            text_column=args.text_column,
            label_column=args.label_column,
            positive=args.positive,
            subset=args.subset,
        )
    print(build(spec))
    return 0


# The commands that read no experiment config.
HELPER_COMMANDS = {"config-help": _config_help, "compare": _compare, "presets": _presets, "build-demo": _build_demo}


if __name__ == "__main__":
    sys.exit(main())
