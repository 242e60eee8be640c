"""The whole experiment as a chain of cached stages: sample -> pairs -> train -> evaluate -> report.

Each stage reads its inputs from the run directory and writes its outputs there (see store.py for
keys and atomic writes). A stage is skipped when its outputs carry the key its settings and inputs
give now, so rerunning a finished config does nothing and changing a setting redoes only what
depends on it. Asking for one stage first brings the stages it reads up to date. Run with:

    prefalign run CONFIG          # every stage
    prefalign evaluate CONFIG     # up to and including evaluate
"""

from __future__ import annotations

import fcntl
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from prefalign import models as M
from prefalign.config import Config
from prefalign.store import is_done, key_of, read_json, write_json, write_parquet, write_text

STAGES = ("sample", "pairs", "train", "evaluate", "report")


def log(msg: str) -> None:
    print(f"[prefalign {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass(frozen=True)
class GridPoint:
    strategy: str
    loss: str
    beta: float
    recipe: str

    @property
    def name(self) -> str:
        return f"{self.strategy}-{self.loss}-beta{self.beta:g}-{self.recipe}"


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

    def model_dir(self, point: GridPoint) -> Path:
        return self.root / "models" / point.name

    def grid(self) -> list[GridPoint]:
        t = self.cfg.train
        return [GridPoint(s, loss, b, t.recipe) for s in self.cfg.pairs.strategies for loss in t.losses for b in t.betas]

    def samples_key(self) -> str:
        return key_of("samples", self.k_policy, self.k_reward, self.cfg.sampling.model_dump())

    def pairs_key(self, strategy: str) -> str:
        p = self.cfg.pairs
        rule = {"margin": p.margin} if strategy == "margin" else {"threshold": p.threshold} if strategy == "threshold" else {}
        return key_of("pairs", self.samples_key(), strategy, p.count, p.seed, rule)

    def model_key(self, point: GridPoint) -> str:
        t = self.cfg.train
        return key_of("model", self.pairs_key(point.strategy), self.k_policy, point.loss, point.beta, t.recipe, t.dpo,
                      t.seed)  # fmt: skip

    def eval_keys(self, model_key: str) -> dict[int, str]:
        s, e = self.cfg.sampling, self.cfg.evaluate
        sampler = s.model_dump(exclude={"num_samples", "seed"})
        return {k: key_of("eval", model_key, self.k_reward, sampler, e.samples, e.seed + k) for k in range(e.runs)}

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

    # ---- stages --------------------------------------------------------------------------

    def sample(self) -> None:
        key = self.samples_key()
        meta = self.root / "samples.meta.json"
        if is_done(meta, key) and self.samples_path.exists():
            log("sample: up to date")
            return
        from prefalign.sampling import sample_and_score

        s = self.cfg.sampling
        log(f"sample: {s.num_samples} texts from {self.cfg.policy.model} on {self.device}")
        policy, ptok = M.load_policy(self.cfg.policy.model, self.cfg.policy.revision, self.device,
                                     M.inference_dtype(self.device), s.max_length)  # fmt: skip
        clf, ctok, pos = self.classifier()
        df = sample_and_score(policy, ptok, clf, ctok, pos, s.num_samples, s, s.seed, self.cfg.reward.batch_size,
                              self.samples_path)  # fmt: skip
        secs = df.attrs["seconds"]
        write_json(meta, {"key": key, "samples": len(df), "seconds": round(secs, 2),
                          "samples_per_second": round(len(df) / secs, 1), "reward_mean": float(df.reward.mean()),
                          "positive_rate": float(df.is_positive.mean())})  # fmt: skip
        log(f"sample: done in {secs:.1f}s ({len(df) / secs:.0f} samples/s), mean reward {df.reward.mean():.3f}, "
            f"positive rate {df.is_positive.mean():.3f}")  # fmt: skip

    def pairs(self) -> None:
        from prefalign.pairs import pairs_frame
        from prefalign.training import bos_prompt

        samples = None
        p = self.cfg.pairs
        for strategy in p.strategies:
            key, path = self.pairs_key(strategy), self.pairs_path(strategy)
            meta = path.with_suffix(".meta.json")
            if is_done(meta, key) and path.exists():
                log(f"pairs {strategy}: up to date")
                continue
            if samples is None:
                samples = pd.read_parquet(self.samples_path, columns=["text", "reward"])
                prompt = bos_prompt(M.load_tokenizer(self.cfg.policy.model, self.cfg.policy.revision, "policy"))
            df = pairs_frame(samples, prompt, strategy=strategy, count=p.count, margin=p.margin,
                             threshold=p.threshold, seed=p.seed)  # fmt: skip
            write_parquet(df, path)
            gap = df.chosen_reward - df.rejected_reward
            write_json(meta, {"key": key, "pairs": len(df), "mean_gap": float(gap.mean()), "min_gap": float(gap.min()),
                              "chosen_reward_mean": float(df.chosen_reward.mean()),
                              "rejected_reward_mean": float(df.rejected_reward.mean())})  # fmt: skip
            log(f"pairs {strategy}: {len(df)} pairs, mean reward gap {gap.mean():.3f}")

    def train(self) -> None:
        from prefalign.training import train_one

        for point in self.grid():
            key, out = self.model_key(point), self.model_dir(point)
            if is_done(out / "train.json", key):
                log(f"train {point.name}: up to date")
                continue
            log(f"train {point.name}")
            t = self.cfg.train
            train_one(self.cfg.policy.model, self.cfg.policy.revision, self.pairs_path(point.strategy), out,
                      t.recipe, point.loss, point.beta, t.dpo, self.device, t.seed, key=key, log=log)  # fmt: skip

    def evaluate(self) -> None:
        from prefalign.evaluation import evaluate_model

        cfg = self.cfg
        targets = [("original", self.k_policy, cfg.policy.model, cfg.policy.revision)]
        targets += [(p.name, self.model_key(p), str(self.model_dir(p)), None) for p in self.grid()]
        for name, model_key, ref, revision in targets:
            keys = self.eval_keys(model_key)
            root = self.root / "eval" / name
            if all(is_done(root / f"run-{k:02d}.json", key) for k, key in keys.items()):
                log(f"evaluate {name}: up to date")
                continue
            log(f"evaluate {name}: {cfg.evaluate.runs} runs x {cfg.evaluate.samples} samples")
            clf, ctok, pos = self.classifier()
            load = lambda ref=ref, revision=revision: M.load_policy(  # noqa: E731
                ref, revision, self.device, M.inference_dtype(self.device), cfg.sampling.max_length
            )
            evaluate_model(name, load, clf, ctok, pos, cfg, keys, root, log=log)

    def report(self) -> None:
        from prefalign.report import write_report

        rows = []
        for name, point, model_key in [("original", None, self.k_policy)] + [
            (p.name, p, self.model_key(p)) for p in self.grid()
        ]:
            for k, key in self.eval_keys(model_key).items():
                meta = read_json(self.root / "eval" / name / f"run-{k:02d}.json")
                if meta is None or meta.get("key") != key:
                    raise RuntimeError(f"report: evaluation {name} run {k} is missing or stale; run `evaluate` first")
                rows.append({"model": name, "strategy": point.strategy if point else "", "loss": point.loss if point else "",
                             "beta": point.beta if point else None, "recipe": point.recipe if point else "", "run": k,
                             **{c: meta[c] for c in ("reward_mean", "reward_std", "diversity", "positive_rate",
                                                     "mean_tokens")}})  # fmt: skip
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
