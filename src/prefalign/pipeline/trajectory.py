"""A trained model's trajectory (`evaluate.during_training`) as plan data: where its points go and
what they depend on.

While a model trains, at step 0 (the start model), every `every` optimizer steps and at its last
step, `samples` texts are sampled from its current weights with the run's sampler under `seed`,
scored and measured like an evaluation run (stages/trajectory.py): one row per point in
`eval/<model>/trajectory.csv`, the texts in `trajectory-texts.parquet`, and `trajectory.json` beside
them holding the key (the model's key and these settings). The trajectory is not part of the model's key (the weights come out the same with
or without it, on a GPU up to its nondeterministic kernels, so the model's evaluations keep their
keys), but it is one of the model's markers: a finished model without its trajectory, or with one
made under other settings, is trained again to draw it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefalign.config.schema import SamplingConfig
from prefalign.pipeline.store import key_of


@dataclass(frozen=True)
class Trajectory:
    """evaluate.during_training for one trained model."""

    every: int
    samples: int
    seed: int
    sampling: SamplingConfig  # the run's sampler
    sampler: dict  # items.sampler_settings(sampling): the settings that change the texts, part of the key
    path: Path  # eval/<model>/trajectory.csv; trajectory.json beside it holds the key

    @property
    def meta(self) -> Path:
        return self.path.with_name("trajectory.json")

    @property
    def texts(self) -> Path:
        return self.path.with_name("trajectory-texts.parquet")

    def key(self, model_key: str) -> str:
        """The key of the trajectory of the model whose key is `model_key` ("texts": one made before
        the texts were kept is made again)."""
        return key_of("trajectory", model_key, self.every, self.samples, self.seed, self.sampler, "texts")


class TrainedMarkers:
    """The markers of a trained model (DpoModel, IterativeRound, RlooModel): its train.json holding
    its key and, with evaluate.during_training, its trajectory.json holding the trajectory's key."""

    def markers(self) -> list[tuple[Path, str]]:
        marks = [(self.path / "train.json", self.key)]
        if self.trajectory is not None:
            marks.append((self.trajectory.meta, self.trajectory.key(self.key)))
        return marks
