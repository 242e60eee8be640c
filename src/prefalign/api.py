"""prefalign from Python (notebooks, scripts): the CLI's commands as functions, and a handle on a run.

    import prefalign
    cfg = prefalign.load_config("tiny", {"run_dir": "/tmp/tiny"})   # `prefalign config tiny --set ...`
    items = prefalign.plan(cfg)                                      # `prefalign plan`, as data
    run = prefalign.run(cfg)                                         # `prefalign run`
    run = prefalign.open_run("/tmp/tiny")                            # a finished run directory
    run.summary, run.results, run.samples(), run.texts("original"), run.model_dir(run.models[1])

Every function does what its command does, through the same code (config/loader.py,
pipeline/plan.py, pipeline/runner.py), and fails the same way: a `PrefalignError` with the message
the CLI prints after `prefalign: ` and the `exit_code` it would exit with (2: found before any
work, 1: during it). Nothing here exits the interpreter. Where a run directory keeps each output
comes from its config's plan (plan.py), the one place that names them.

Importing this module (and `prefalign`) loads no torch: each function imports what it needs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefalign.errors import PrefalignError

if TYPE_CHECKING:
    import pandas as pd

    from prefalign.config.schema import Config
    from prefalign.pipeline.items import Item

__all__ = ["Run", "RunError", "load_config", "open_run", "plan", "run"]


class RunError(PrefalignError):
    """A run directory, model or output that a `Run` was asked for and does not have."""

    exit_code = 2


def load_config(
    source: str | os.PathLike | Mapping[str, Any] | Config,
    overrides: Mapping[str, Any] | Iterable[str] | None = None,
) -> Config:
    """The validated config of `source`: a preset name (`"tiny"`), a YAML path, a mapping of
    sections (as a YAML file would hold) or a Config; with `overrides` on top, either a mapping of
    dotted keys to values (`{"train.betas": [0.1, 1]}`, values taken as they are) or the CLI's
    `--set` strings (`["train.betas=[0.1,1]"]`, values parsed as YAML).

    Raises `ConfigError` (exit_code 2) with the message `prefalign config` prints."""
    from prefalign.config.loader import load_config as load

    return load(source, overrides)


def _config(config) -> Config:
    """A Config as it is, anything else through load_config."""
    from prefalign.config.schema import Config

    return config if isinstance(config, Config) else load_config(config)


def plan(config) -> list[Item]:
    """The work items of a config (a Config, or what load_config reads), inputs first: what
    `prefalign plan` prints, one line each. Each has `name`, `key`, `path` (its output) and `stage`."""
    from prefalign.pipeline.plan import plan as make_plan

    return make_plan(_config(config))


def run(config, stages: str | Iterable[str] | None = None, *, update: bool = False) -> Run:
    """Run a config (a Config, or what load_config reads) as `prefalign run` does, and return its `Run`.

    `stages`: None for every stage; a stage name (`"sample"`, `"pairs"`, `"train"`, `"evaluate"`,
    `"report"`) to bring that stage up to date as its CLI command does, with the stages before it
    that it reads; a list of names goes as far as the last of them. Outputs already made with the
    same settings are kept (a rerun resumes). `update`: as `--update`, allow redoing outputs the run
    directory holds for another config (without it, such a run stops before any work, naming the
    keys that differ). For several processes, start the script with `accelerate launch`: each
    process calls this with the same config and takes its share."""
    from prefalign.pipeline.logs import quiet_libraries
    from prefalign.pipeline.plan import STAGE_NAMES
    from prefalign.pipeline.runner import run as run_items

    cfg = _config(config)
    asked = ["report"] if stages is None else [stages] if isinstance(stages, str) else list(stages)
    unknown = [s for s in asked if s not in STAGE_NAMES]
    if unknown or not asked:
        raise RunError(f"stages {unknown or asked!r}: name stages among {', '.join(STAGE_NAMES)}")
    quiet_libraries()  # as the CLI: prefalign's log lines and training progress, not every library's notices
    run_items(cfg, until=max(asked, key=STAGE_NAMES.index), update=update)
    return Run(cfg.run_path, cfg)


def open_run(path: str | os.PathLike) -> Run:
    """The `Run` of a run directory a finished run left (it holds the config.yaml a run writes last).
    The directory may have moved since: its outputs are looked for where it is now."""
    from prefalign.config.loader import ConfigError
    from prefalign.config.loader import load_config as load

    root = Path(path)
    if not root.is_dir():
        raise RunError(f"{str(root)!r} is not a directory: give the run_dir of a run")
    config_file = root / "config.yaml"
    if not config_file.is_file():
        raise RunError(
            f"{str(root)!r} is not a prefalign run directory: it has no config.yaml, which a run writes when it "
            "finishes (a run that never finished can be resumed with prefalign.run(config))"
        )
    try:
        cfg = load(config_file)
    except ConfigError as e:
        raise RunError(f"{config_file}: {e.said()}") from None
    return Run(root, cfg.model_copy(update={"run_dir": str(root)}))


class Run:
    """A run directory and the config its outputs were made with: its tables, texts and models.

    Tables are read when asked for (a run resumed or extended since shows its new outputs).
    A model is named as in results.csv's `model` column (`original`, `random-sigmoid-beta0.1-default`, ...)."""

    def __init__(self, path: str | os.PathLike, config: Config):
        self.path = Path(path)
        self.config = config
        self._items: list[Item] | None = None

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, config {self.config.name!r})"

    # ---- tables and report --------------------------------------------------------------------

    @property
    def results(self) -> pd.DataFrame:
        """results.csv: one row per model and evaluation run (the report stage writes it)."""
        return self._csv("results.csv")

    @property
    def summary(self) -> pd.DataFrame:
        """summary.csv: one row per model, mean and spread across its runs (the report stage writes it)."""
        return self._csv("summary.csv")

    @property
    def report_md(self) -> Path:
        return self.path / "report.md"

    @property
    def report_html(self) -> Path:
        return self.path / "report.html"

    @property
    def plots(self) -> Path:
        """The folder of the report's PNG plots."""
        return self.path / "plots"

    def _csv(self, name: str) -> pd.DataFrame:
        import pandas as pd

        return pd.read_csv(self._made(self.path / name, "report"))

    # ---- models and their texts ---------------------------------------------------------------

    @property
    def models(self) -> list[str]:
        """The models the config evaluates, the original first."""
        return list(self._by_name("evaluations"))

    def samples(self, model: str | None = None) -> pd.DataFrame:
        """The texts the sample stage drew, each with its reward: the original's (samples.parquet),
        or those an iterative round drew from `model` (its parent in the chain) to make its pairs."""
        import pandas as pd

        name = model or "original"
        samples = self._by_name("samples")
        if name not in samples:
            self._known(name)
            raise RunError(
                f"no samples were drawn from {name!r}: the run samples the original and, in an iterative chain, "
                f"each round's model but the last (models with samples: {', '.join(samples)})"
            )
        return pd.read_parquet(self._output(samples[name]))

    def texts(self, model: str, run: int = 0) -> pd.DataFrame:
        """The texts evaluation run `run` of `model` drew, each with its reward (eval/<model>/run-XX.parquet)."""
        import pandas as pd

        evaluation = self._known(model)
        if not (isinstance(run, int) and 0 <= run < evaluation.runs):
            raise RunError(f"{model!r} has evaluation runs 0 to {evaluation.runs - 1} (evaluate.runs), not {run!r}")
        return pd.read_parquet(self._output(evaluation, evaluation.run_path(run, ".parquet")))

    def model_dir(self, model: str) -> Path:
        """The directory of a model the run trained (weights, tokenizer, train.json): loads with
        transformers' `from_pretrained`."""
        self._known(model)
        trained = self._by_name("trained")
        if model not in trained:
            raise RunError(
                f"{model!r} is not trained by the run: its weights are policy.model ({self.config.policy.model}); "
                f"trained models: {', '.join(trained) or 'none'}"
            )
        return self._output(trained[model])

    # ---- where the plan puts each output -------------------------------------------------------

    def _known(self, model: str):
        """The evaluation of `model`, or an error naming the models there are."""
        evaluations = self._by_name("evaluations")
        if model not in evaluations:
            raise RunError(f"no model {model!r} in this run; its models: {', '.join(evaluations)}")
        return evaluations[model]

    def _made(self, path: Path, stage: str) -> Path:
        """`path` when it is on disk, else an error naming the stage that makes it."""
        if not path.exists():
            raise RunError(
                f"{path} is not made yet: the {stage} stage has not run in {self.path} "
                f"(prefalign.run(config, stages={stage!r}) makes it)"
            )
        return path

    def _output(self, item: Item, path: Path | None = None) -> Path:
        """An output of a planned item (by default its `path`), checked to be on disk."""
        from prefalign.pipeline.plan import stage_of

        return self._made(item.path if path is None else path, stage_of(item))

    def _by_name(self, kind: str) -> dict[str, Any]:
        """`evaluations`, `trained` or `samples` items of the plan, by their model's name."""
        from prefalign.pipeline.items import TRAINED, Evaluation, Samples

        items = self._plan()
        if kind == "evaluations":
            return {i.model.name: i for i in items if isinstance(i, Evaluation)}
        if kind == "trained":
            return {i.name: i for i in items if isinstance(i, TRAINED)}
        return {i.policy.name: i for i in items if isinstance(i, Samples)}

    def _plan(self) -> list[Item]:
        """The config's items, planned for their paths only: the models are not read (their
        identities, part of the keys alone, are placeholders), and the evidence items (best-of-N,
        judges, fluency) are left out, as planning them checks each scorer's model."""
        if self._items is None:
            from prefalign.pipeline.items import Original, RewardModel
            from prefalign.pipeline.plan import plan as make_plan

            cfg = self.config
            paths_only = cfg.model_copy(
                update={
                    "run_dir": str(self.path),
                    "evaluate": cfg.evaluate.model_copy(update={"judges": [], "fluency": None}),
                    "baselines": cfg.baselines.model_copy(update={"best_of_n": []}),
                }
            )
            p, r = cfg.policy, cfg.reward
            original = Original(p.model, p.revision, "(not read)")
            reward = RewardModel(r.model, r.revision, r.positive_label, "(not read)", r.single_logit)
            self._items = make_plan(paths_only, original, reward)
        return self._items
