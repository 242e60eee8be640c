"""The command line's own help: each command's line and example, the presets' list, --version."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

from helpers import prefalign

import prefalign as package
from prefalign.cli import _parser

PRESETS = Path(package.__file__).parent / "presets"
PRESET_FILES = sorted(p.stem for p in PRESETS.glob("*.yaml"))


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = _parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_every_command_has_a_one_line_description_and_an_example_that_parses():
    commands = subcommands()
    assert {"run", "plan", "config", "config-help", "presets", "build-demo", "compare"} <= set(commands)
    for name, parser in commands.items():
        assert parser.description and "\n" not in parser.description, name
        example = re.fullmatch(r"example:\n  (prefalign .+)", parser.epilog or "")
        assert example, (name, parser.epilog)
        args = shlex.split(example[1])[1:]
        assert _parser().parse_args(args).command == name  # the example is a valid command line of its own
    help_text = prefalign("--help").stdout
    listed = re.findall(r"^    (\S+)", help_text, re.M)  # under COMMAND: each command, then its line
    assert listed == list(commands)


def test_presets_lists_every_preset_file_with_what_it_runs_and_its_time(cli):
    lines = cli("presets").stdout.splitlines()
    assert [line.split()[0] for line in lines] == PRESET_FILES
    for line in lines:
        name, description = line.split(maxsplit=1)
        assert len(description) > 20 and ("on 2 CPU cores" in description or "GPU" in description), line
    # each line is the first line of its preset file, the one place it is written
    for name, description in (line.split(maxsplit=1) for line in lines):
        first = (PRESETS / f"{name}.yaml").read_text().splitlines()[0]
        assert first == f"# description: {description}"


def test_version_prints_the_packages_version():
    out = prefalign("--version").stdout
    pyproject = (Path(package.__file__).parents[2] / "pyproject.toml").read_text()
    assert out == f"prefalign {package.__version__}\n"
    assert re.search(r'^version = "(.+)"$', pyproject, re.M)[1] == package.__version__
