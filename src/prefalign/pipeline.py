"""The whole experiment as a chain of cached stages: sample -> pairs -> train -> evaluate -> report.

Each stage reads its inputs from the run directory and writes its outputs there (see store.py for
keys and atomic writes). A stage is skipped when its outputs carry the key its settings and inputs
give now, so rerunning a finished config does nothing and changing a setting redoes only what
depends on it. Asking for one stage first brings the stages it reads up to date.

The models (`ModelSpec`): the DPO grid (pairs.strategies x train.losses x train.betas, plus
train.extra); iterative chains, whose round r samples from round r-1's model, builds its own pairs
and trains from round r-1's weights against the original as reference (so the train stage runs
its own sample and pairs steps for rounds 2..R, under `iterative/`); and RLOO models. Keys chain
the same way, so a change to round 1 redoes every later round. Run with:

    prefalign run CONFIG          # every stage
    prefalign evaluate CONFIG     # up to and including evaluate
"""

from __future__ import annotations

import ctypes
import dataclasses
import fcntl
import functools
import gc
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any
from pathlib import Path

import pandas as pd
import yaml

from prefalign import models as M
from prefalign.config import Config, loss_label
from prefalign.store import is_done, key_of, read_json, write_json, write_parquet, write_text

STAGES = ("sample", "pairs", "train", "evaluate", "report")


def log(msg: str) -> None:
    print(f"[prefalign {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def release_memory() -> None:
    """Hand freed heap back to the OS between models.

    Each training and evaluation allocates tensors of new shapes; glibc keeps the freed blocks, so
    without this the process's resident memory ratchets up model after model of a long grid.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        pass


@dataclass(eq=False)
class ModelSpec:
    """One model the run trains: a DPO grid point, one round of an iterative chain, or an RLOO model."""

    method: str  # "dpo", "iterative" or "rloo"
    strategy: str = ""
    loss: Any = ""  # a train.losses entry: a name or a LossMix
    beta: float = float("nan")
    recipe: str = ""
    round: int = 0
    kl_coef: float = float("nan")

    @property
    def loss_label(self) -> str:
        return loss_label(self.loss) if self.loss != "" else ""

    @property
    def chain(self) -> str:
        return f"iter-{self.strategy}-{self.loss_label}-beta{self.beta:g}-{self.recipe}"

    @property
    def name(self) -> str:
        if self.method == "rloo":
            return f"rloo-kl{self.kl_coef:g}"
        if self.method == "iterative":
            return f"{self.chain}-r{self.round}"
        return f"{self.strategy}-{self.loss_label}-beta{self.beta:g}-{self.recipe}"

    def row(self) -> dict:
        """The columns that describe this model in results.csv."""
        return {"method": self.method, "strategy": self.strategy, "loss": self.loss_label,
                "beta": None if self.method == "rloo" else self.beta, "recipe": self.recipe,
                "round": self.round if self.method == "iterative" else None,
                "kl_coef": self.kl_coef if self.method == "rloo" else None}  # fmt: skip


ORIGINAL_ROW = {"method": "original", "strategy": "", "loss": "", "beta": None, "recipe": "", "round": None, "kl_coef": None}


def _loss_key(loss) -> Any:
    """What a loss entry contributes to a model key (a plain name keys exactly as before mixes existed)."""
    return loss if isinstance(loss, str) else loss.model_dump()


class Run:
    """One config's run directory: paths, keys, and the stages in order."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.root = cfg.run_path
        self.device = M.pick_device(cfg.device)
        self.k_policy = M.identity(cfg.policy.model, cfg.policy.revision)
        self.k_reward = key_of(M.identity(cfg.reward.model, cfg.reward.revision), cfg.reward.positive_label)
        self._classifier = None

    # ---- layout and keys -----------------------------------------------------------------

    @property
    def samples_path(self) -> Path:
        return self.root / "samples.parquet"

    def pairs_path(self, strategy: str) -> Path:
        return self.root / "pairs" / f"{strategy}.parquet"

    def model_dir(self, spec: ModelSpec) -> Path:
        return self.root / "models" / spec.name

    def round_dir(self, spec: ModelSpec) -> Path:
        return self.root / "iterative" / spec.chain / f"round-{spec.round}"

    def grid(self) -> list[ModelSpec]:
        """The DPO models: strategies x losses x betas, then `train.extra`."""
        t = self.cfg.train
        specs = [ModelSpec("dpo", s, loss, b, t.recipe) for s in self.cfg.pairs.strategies for loss in t.losses for b in t.betas]
        specs += [ModelSpec("dpo", x.strategy, x.loss, x.beta, x.recipe or t.recipe) for x in t.extra]
        return specs

    def chains(self) -> list[list[ModelSpec]]:
        it = self.cfg.iterative
        recipe = it.recipe or self.cfg.train.recipe
        return [[ModelSpec("iterative", it.strategy, loss, b, recipe, r) for r in range(1, it.rounds + 1)]
                for loss in it.losses for b in it.betas] if it.rounds else []  # fmt: skip

    def models(self) -> list[ModelSpec]:
        """Every trained model, in report order; names are unique (config validation keeps them so)."""
        specs = self.grid() + [s for chain in self.chains() for s in chain]
        specs += [ModelSpec("rloo", kl_coef=c) for c in self.cfg.online.kl_coefs]
        seen: dict[str, ModelSpec] = {}
        for s in specs:
            seen.setdefault(s.name, s)  # `extra` may repeat a product point: train it once
        return list(seen.values())

    def _sampler(self) -> dict:
        s = self.cfg.sampling
        # Without prompts the key is what it was before prompts existed, so older run dirs stay valid.
        return s.model_dump(exclude={"num_samples", "seed"} | ({"prompts"} if s.prompts is None else set()))

    def samples_key(self, spec: ModelSpec | None = None) -> str:
        """The main samples, or the samples an iterative round draws from the previous round's model."""
        s = self.cfg.sampling
        if spec is None or spec.round <= 1:
            return key_of("samples", self.k_policy, self.k_reward, {**self._sampler(), "num_samples": s.num_samples,
                                                                      "seed": s.seed})  # fmt: skip
        parent = dataclasses.replace(spec, round=spec.round - 1)
        n = self.cfg.iterative.samples or s.num_samples
        return key_of("samples", self.model_key(parent), self.k_reward, self._sampler(), n, s.seed + spec.round)

    def pairs_seed(self, spec: ModelSpec | None = None) -> int:
        """pairs.seed, shifted per iterative round so every round draws its own pairs."""
        return self.cfg.pairs.seed + (spec.round - 1 if spec is not None and spec.round else 0)

    def pairs_key(self, strategy: str, spec: ModelSpec | None = None) -> str:
        p = self.cfg.pairs
        return key_of("pairs", self.samples_key(spec), strategy, p.count, self.pairs_seed(spec), p.rule(strategy))

    def model_key(self, spec: ModelSpec) -> str:
        t = self.cfg.train
        if spec.method == "rloo":
            o = self.cfg.online
            return key_of("rloo", self.k_policy, self.k_reward, spec.kl_coef, o.steps, o.rloo, self._sampler(), t.seed)
        loss = _loss_key(spec.loss) if spec.loss != "slic" else ("slic", t.slic_sft_weight)
        if spec.method == "dpo":
            return key_of("model", self.pairs_key(spec.strategy), self.k_policy, loss, spec.beta, spec.recipe, t.dpo, t.seed)
        start = self.k_policy if spec.round == 1 else self.model_key(dataclasses.replace(spec, round=spec.round - 1))
        return key_of("model", self.pairs_key(spec.strategy, spec), start, loss, spec.beta, spec.recipe, t.dpo, t.seed)

    def eval_keys(self, model_key: str) -> dict[int, str]:
        e = self.cfg.evaluate
        sampler = self._sampler()
        metrics = ("metrics-v2", e.kl, e.reward_thresholds)
        return {k: key_of("eval", model_key, self.k_reward, sampler, e.samples, e.seed + k, metrics) for k in range(e.runs)}

    # ---- shared loading ------------------------------------------------------------------

    def classifier(self):
        if self._classifier is None:
            r = self.cfg.reward
            clf, ctok = M.load_classifier(r.model, r.revision, self.device, M.inference_dtype(self.device))
            self._classifier = clf, ctok, M.positive_index(clf.config.id2label, r.positive_label)
        return self._classifier

    def write_provenance(self) -> None:
        """config.yaml (as resolved) and models.json (which models, and their quality when known)."""
        write_text(self.root / "config.yaml", yaml.safe_dump(self.cfg.model_dump(), sort_keys=False))
        info: dict = {"policy": {"ref": self.cfg.policy.model, "revision": self.cfg.policy.revision},
                      "reward_model": {"ref": self.cfg.reward.model, "revision": self.cfg.reward.revision,
                                       "positive_label": self.cfg.reward.positive_label}}  # fmt: skip
        for role, section in (("policy", "policy"), ("reward", "reward_model")):
            ref = getattr(self.cfg, role).model
            path = M.resolve(ref, role)
            info[section]["path"] = str(Path(path).resolve()) if Path(path).is_dir() else path
            built = read_json(Path(path).parent / "info.json") if ref.startswith("prefalign:") else None
            if built:
                info[section].update(built[section])
        write_json(self.root / "models.json", info)

    def prompts(self, tokenizer, n: int, seed: int):
        """Per-row (ids, text) prompts for n samples, or None when sampling starts from BOS alone."""
        if self.cfg.sampling.prompts is None:
            return None
        from prefalign.prompts import corpus_prompts

        return corpus_prompts(self.cfg.sampling.prompts, tokenizer, n, seed)

    # ---- stages --------------------------------------------------------------------------

    def _sample_to(self, path: Path, key: str, policy_ref: str, revision: str | None, n: int, seed: int, what: str) -> None:
        from prefalign.sampling import sample_and_score

        meta = path.with_name("samples.meta.json")
        if is_done(meta, key) and path.exists():
            log(f"{what}: up to date")
            return
        s = self.cfg.sampling
        log(f"{what}: {n} texts from {policy_ref} on {self.device}")
        policy, ptok = M.load_policy(policy_ref, revision, self.device, M.inference_dtype(self.device), s.max_length)
        clf, ctok, pos = self.classifier()
        df = sample_and_score(policy, ptok, clf, ctok, pos, n, s, seed, self.cfg.reward.batch_size, path,
                              desc=what, prompts=self.prompts(ptok, n, seed))  # fmt: skip
        secs = df.attrs["seconds"]
        write_json(meta, {"key": key, "samples": len(df), "seconds": round(secs, 2),
                          "samples_per_second": round(len(df) / secs, 1), "reward_mean": float(df.reward.mean()),
                          "positive_rate": float(df.is_positive.mean())})  # fmt: skip
        log(f"{what}: done in {secs:.1f}s ({len(df) / secs:.0f} samples/s), mean reward {df.reward.mean():.3f}, "
            f"positive rate {df.is_positive.mean():.3f}")  # fmt: skip

    def sample(self) -> None:
        s = self.cfg.sampling
        self._sample_to(self.samples_path, self.samples_key(), self.cfg.policy.model, self.cfg.policy.revision,
                        s.num_samples, s.seed, "sample")  # fmt: skip

    @functools.cached_property
    def bos_prompt(self) -> str:
        from prefalign.training import bos_prompt

        return bos_prompt(M.load_tokenizer(self.cfg.policy.model, self.cfg.policy.revision, "policy"))

    @staticmethod
    def _samples_reader(path: Path):
        """Read a samples file at most once, and only if some pair file needs it."""
        return functools.cache(lambda: pd.read_parquet(path))

    def _pairs_to(self, samples, path: Path, key: str, strategy: str, seed: int, what: str) -> None:
        """Write one pair file from `samples()` (a reader of the samples frame) unless it is up to date."""
        from prefalign.pairs import pairs_frame

        meta = path.with_suffix(".meta.json")
        if is_done(meta, key) and path.exists():
            log(f"{what}: up to date")
            return
        p = self.cfg.pairs
        df = pairs_frame(samples(), self.bos_prompt, strategy=strategy, count=p.count, seed=seed, **p.rule(strategy))
        write_parquet(df, path)
        gap = df.chosen_reward - df.rejected_reward
        write_json(meta, {"key": key, "pairs": len(df), "mean_gap": float(gap.mean()), "min_gap": float(gap.min()),
                          "chosen_reward_mean": float(df.chosen_reward.mean()),
                          "chosen_reward_std": float(df.chosen_reward.std()),
                          "rejected_reward_mean": float(df.rejected_reward.mean())})  # fmt: skip
        log(f"{what}: {len(df)} pairs, mean reward gap {gap.mean():.3f}")

    def pairs(self) -> None:
        samples = self._samples_reader(self.samples_path)
        for strategy in dict.fromkeys(s.strategy for s in self.grid()):
            self._pairs_to(samples, self.pairs_path(strategy), self.pairs_key(strategy), strategy, self.pairs_seed(),
                           f"pairs {strategy}")  # fmt: skip

    def _train_dpo(self, spec: ModelSpec, pairs_path: Path, start: str, reference: str | None) -> None:
        from prefalign.training import train_one

        key, out = self.model_key(spec), self.model_dir(spec)
        if is_done(out / "train.json", key):
            log(f"train {spec.name}: up to date")
            return
        twin = next((d for d in sorted((self.root / "models").glob("*")) if d != out and is_done(d / "train.json", key)), None)
        if twin is not None:
            # Same pairs, start, loss and settings (e.g. iterative round 1 = its DPO grid point): same model.
            tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(twin, tmp)
            shutil.rmtree(out, ignore_errors=True)
            os.replace(tmp, out)
            log(f"train {spec.name}: the same model as {twin.name}, copied")
            return
        log(f"train {spec.name}")
        t = self.cfg.train
        revision = self.cfg.policy.revision if start == self.cfg.policy.model else None
        train_one(start, revision, pairs_path, out, spec.recipe, spec.loss, spec.beta, t.dpo, self.device, t.seed,
                  key=key, log=log, reference_ref=reference, slic_sft_weight=t.slic_sft_weight)  # fmt: skip
        release_memory()

    def train(self) -> None:
        """The DPO grid, then each iterative chain round by round, then the online baseline."""
        for spec in self.grid():
            self._train_dpo(spec, self.pairs_path(spec.strategy), self.cfg.policy.model, None)
        for chain in self.chains():
            for spec in chain:
                rd = self.round_dir(spec)
                if spec.round == 1:
                    samples, start, reference = self.samples_path, self.cfg.policy.model, None
                else:
                    start, reference = str(self.model_dir(chain[spec.round - 2])), self.cfg.policy.model
                    samples = rd / "samples.parquet"
                    n = self.cfg.iterative.samples or self.cfg.sampling.num_samples
                    self._sample_to(samples, self.samples_key(spec), start, None, n, self.cfg.sampling.seed + spec.round,
                                    f"{spec.name} sample")  # fmt: skip
                self._pairs_to(self._samples_reader(samples), rd / "pairs.parquet", self.pairs_key(spec.strategy, spec),
                               spec.strategy, self.pairs_seed(spec), f"{spec.name} pairs")  # fmt: skip
                self._train_dpo(spec, rd / "pairs.parquet", start, reference)
        for spec in (s for s in self.models() if s.method == "rloo"):
            key, out = self.model_key(spec), self.model_dir(spec)
            if is_done(out / "train.json", key):
                log(f"train {spec.name}: up to date")
                continue
            from prefalign.online import train_rloo

            log(f"train {spec.name}: RLOO, {self.cfg.online.steps} steps")
            clf, ctok, _ = self.classifier()
            train_rloo(self.cfg.policy.model, self.cfg.policy.revision, clf, ctok, self.cfg.reward.positive_label, out,
                       kl_coef=spec.kl_coef, steps=self.cfg.online.steps, overrides=self.cfg.online.rloo,
                       device=self.device, seed=self.cfg.train.seed, key=key, log=log, sampling=self.cfg.sampling)  # fmt: skip
            release_memory()

    def targets(self) -> list[tuple[str, dict, str, str, str | None]]:
        """(name, row, model key, model ref, revision) of the original and every trained model."""
        cfg = self.cfg
        out = [("original", ORIGINAL_ROW, self.k_policy, cfg.policy.model, cfg.policy.revision)]
        return out + [(s.name, s.row(), self.model_key(s), str(self.model_dir(s)), None) for s in self.models()]

    def evaluate(self) -> None:
        from prefalign.evaluation import evaluate_model

        cfg = self.cfg
        reference = None
        for name, _, model_key, ref, revision in self.targets():
            keys = self.eval_keys(model_key)
            root = self.root / "eval" / name
            if all(is_done(root / f"run-{k:02d}.json", key) for k, key in keys.items()):
                log(f"evaluate {name}: up to date")
                continue
            log(f"evaluate {name}: {cfg.evaluate.runs} runs x {cfg.evaluate.samples} samples")
            clf, ctok, pos = self.classifier()
            if cfg.evaluate.kl and name != "original" and reference is None:
                reference = M.load_policy(cfg.policy.model, cfg.policy.revision, self.device,
                                          M.inference_dtype(self.device))[0]  # fmt: skip
            load = lambda ref=ref, revision=revision: M.load_policy(  # noqa: E731
                ref, revision, self.device, M.inference_dtype(self.device), cfg.sampling.max_length
            )
            evaluate_model(name, load, clf, ctok, pos, cfg, keys, root, log=log,
                           reference=reference if name != "original" else None, prompts=self.prompts)  # fmt: skip
            release_memory()

    def report(self) -> None:
        from prefalign.report import write_report

        rows = []
        for name, row, model_key, _, _ in self.targets():
            for k, key in self.eval_keys(model_key).items():
                meta = read_json(self.root / "eval" / name / f"run-{k:02d}.json")
                if meta is None or meta.get("key") != key:
                    raise RuntimeError(f"report: evaluation {name} run {k} is missing or stale; run `evaluate` first")
                metrics = {c: v for c, v in meta.items() if c not in ("key", "model", "run", "seed", "samples", "seconds")}
                rows.append({"model": name, **row, "run": k, **metrics})
        results = pd.DataFrame(rows)
        key = key_of("report", results.to_dict("records"))
        if is_done(self.root / "report.meta.json", key) and (self.root / "report.md").exists():
            log("report: up to date")
            return
        write_report(self, results)
        write_json(self.root / "report.meta.json", {"key": key})
        log(f"report: {self.root / 'report.md'}")

    def clean_stale(self) -> None:
        """Remove temporary leftovers of killed runs (their names start with '.' and hold '.tmp-')."""
        if self.root.exists():
            for tmp in self.root.rglob(".*.tmp-*"):
                shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


class RunLocked(Exception):
    """Another prefalign process is working in the same run directory."""


def run(cfg: Config, until: str = "report") -> Run:
    """Bring every stage up to `until` up to date, in order."""
    r = Run(cfg)
    r.root.mkdir(parents=True, exist_ok=True)
    with open(r.root / ".lock", "a") as lock:  # "a": opening must not touch the file
        # Two processes in one run dir would delete each other's temporary files; the OS drops the
        # lock when the holder dies, so a killed run never leaves a stale lock behind.
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLocked(f"another prefalign process is running in {r.root}") from None
        r.clean_stale()
        r.write_provenance()
        t0 = time.time()
        for stage in STAGES[: STAGES.index(until) + 1]:
            getattr(r, stage)()
        log(f"{until}: finished in {time.time() - t0:.1f}s; outputs in {r.root}")
    return r
