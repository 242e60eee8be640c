"""Benchmark prefalign's sample+score engine and training recipe against the original experiment's code.

The baseline is a faithful re-implementation of the original's evaluation loop: generate from a
single BOS tensor with `num_return_sequences=100`, `max_length=64`, `top_k=50`, `top_p=0.85`,
decode, and score each batch of 100 with the classifier called *without* `no_grad` /
`inference_mode`, tokenized with `padding=True`; repeat until N. The engine is
`prefalign.engine.sample_file.sample_and_score` with the settings a config would use. Both run in the same
process, alternating, `--reps` times; the median wall time of each is reported with the ratio.

    python benchmarks/bench_engine.py sample --models demo --n 2000 --reps 3
    python benchmarks/bench_engine.py sample --models gpt2-small --n 200 --reps 3
    python benchmarks/bench_engine.py train --models demo --pairs 1024 --reps 3
    python benchmarks/bench_engine.py steps --models gpt2-small --device cuda --steps 200
    python benchmarks/bench_engine.py optimizer --device cuda
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch


def load_models(which: str, device: torch.device | None = None):
    """(policy, policy tokenizer, classifier, classifier tokenizer, positive index, policy dir), in fp32 on `device`."""
    from prefalign.models.loading import load_classifier, load_policy, positive_class_index

    cpu = device or torch.device("cpu")
    if which in ("demo", "tiny"):
        from prefalign.models.builtin import build
        from prefalign.models.specs import SPECS

        root = build(SPECS[which])
        policy_dir, reward_dir = str(root / "policy"), str(root / "reward")
    elif which == "gpt2-small":
        policy_dir, reward_dir = build_base_sized(Path(tempfile.gettempdir()) / "prefalign-bench-base")
    else:
        raise SystemExit(f"unknown model set {which}")
    policy, policy_tokenizer = load_policy(policy_dir, None, cpu)
    classifier, classifier_tokenizer = load_classifier(reward_dir, None, cpu)
    positive_index = positive_class_index(classifier.config.id2label, "POSITIVE")
    return policy, policy_tokenizer, classifier, classifier_tokenizer, positive_index, policy_dir


def build_base_sized(root: Path) -> tuple[str, str]:
    """GPT-2-small (124M) and DistilBERT-base (67M) shaped models with random weights: same cost as the real ones.

    The tokenizer is a small BPE padded with single-token fillers up to GPT-2's 50,257 ids, shared by
    both models, so every id the random policy samples decodes to one token the classifier also sees
    as one token (texts keep GPT-2-like lengths for the classifier).
    """
    from prefalign.models.builtin import synthetic_corpus, train_tokenizers

    policy_dir, reward_dir = root / "policy", root / "reward"
    if not (reward_dir / "config.json").exists():
        from transformers import DistilBertConfig, DistilBertForSequenceClassification, GPT2Config, GPT2LMHeadModel

        texts, _ = synthetic_corpus()
        policy_tokenizer, classifier_tokenizer = train_tokenizers(texts, 1000)
        fillers = [f" w{i}" for i in range(50257 - len(policy_tokenizer))]
        policy_tokenizer.add_tokens(fillers), classifier_tokenizer.add_tokens(fillers)
        assert len(policy_tokenizer) == 50257
        assert policy_tokenizer.convert_tokens_to_ids(" w7") == classifier_tokenizer.convert_tokens_to_ids(" w7")
        torch.manual_seed(0)
        policy = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=len(policy_tokenizer),
                bos_token_id=policy_tokenizer.bos_token_id,
                eos_token_id=policy_tokenizer.eos_token_id,
            )
        )
        classifier = DistilBertForSequenceClassification(
            DistilBertConfig(
                vocab_size=len(classifier_tokenizer),
                pad_token_id=classifier_tokenizer.pad_token_id,
                id2label={0: "NEGATIVE", 1: "POSITIVE"},
                label2id={"NEGATIVE": 0, "POSITIVE": 1},
            )
        )
        classifier_tokenizer.model_max_length = 512
        policy.save_pretrained(policy_dir), policy_tokenizer.save_pretrained(policy_dir)
        classifier.save_pretrained(reward_dir), classifier_tokenizer.save_pretrained(reward_dir)
    return str(policy_dir), str(reward_dir)


def baseline(policy, policy_tokenizer, classifier, classifier_tokenizer, positive_index: int, n: int) -> list[float]:
    """The original experiment's loop, as described in ../shared/NOTES.md."""
    bos = torch.tensor([[policy_tokenizer.bos_token_id]], device=policy.device)
    rewards: list[float] = []
    while len(rewards) < n:
        out = policy.generate(
            bos,
            do_sample=True,
            max_length=64,
            top_k=50,
            top_p=0.85,
            num_return_sequences=100,
            pad_token_id=policy_tokenizer.eos_token_id,
        )
        texts = policy_tokenizer.batch_decode(out, skip_special_tokens=True)
        enc = classifier_tokenizer(texts, padding=True, return_tensors="pt").to(classifier.device)
        logits = classifier(**enc).logits  # no no_grad, as in the original
        rewards.extend(logits[:, positive_index].tolist())
    return rewards[:n]


def engine(
    policy, policy_tokenizer, classifier, classifier_tokenizer, positive_index: int, n: int, compile_step: str = "auto"
) -> None:
    from prefalign.config.schema import SamplingConfig
    from prefalign.engine.sample_file import sample_and_score

    with tempfile.TemporaryDirectory() as d:
        sample_and_score(
            policy,
            policy_tokenizer,
            classifier,
            classifier_tokenizer,
            positive_index,
            n,
            SamplingConfig(compile_step=compile_step),
            0,
            None,
            Path(d) / "s.parquet",
        )


def eager_engine(*args) -> None:
    """The engine with `sampling.compile_step: eager` (on a GPU `auto` compiles the decode step)."""
    engine(*args, compile_step="eager")


def bench_sample(args) -> None:
    """The original loop and the engine on the same fp32 models; on a GPU also the engine in bf16, the
    dtype the pipeline samples in there (`models.device.inference_dtype`)."""
    from prefalign.models.device import inference_dtype, pick_device

    device = pick_device(args.device)
    policy, policy_tokenizer, classifier, classifier_tokenizer, positive_index, _ = load_models(args.models, device)
    # name: (function, policy, classifier, cuDNN attention allowed?): the baseline runs with torch's
    # defaults (cuDNN allowed), the engine with device.use_attention_kernels as the pipeline does:
    # in fp32 with the eager decode loop, and on a GPU in bf16 as the pipeline samples there (its
    # decode step compiled and run as CUDA graphs, sampling.compile_step: auto) and eagerly.
    sides = {"baseline": (baseline, policy, classifier, True), "engine": (eager_engine, policy, classifier, False)}
    if inference_dtype(device) != torch.float32:
        dtype = inference_dtype(device)
        low = [copy.deepcopy(m).to(dtype) for m in (policy, classifier)]
        sides[f"engine {str(dtype).split('.')[-1]}"] = (engine, *low, False)
        sides[f"engine {str(dtype).split('.')[-1]} eager"] = (eager_engine, *low, False)
    # The warm-up compiles the decode step (once per dtype and batch size: the engine's warm-up draws
    # the full N, so its batch sizes are the timed run's) and records its CUDA graphs.
    for name, (fn, p, c, cudnn) in sides.items():  # warm-up (allocator, lazy imports, kernels)
        torch.backends.cuda.enable_cudnn_sdp(cudnn)
        n = min(args.n, 200) if fn is baseline else args.n
        t0 = time.perf_counter()
        fn(p, policy_tokenizer, c, classifier_tokenizer, positive_index, n)
        print(f"warm-up {name}: {time.perf_counter() - t0:.1f}s for {n} texts", flush=True)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for rep in range(args.reps):
        for name, (fn, p, c, cudnn) in sides.items():
            torch.backends.cuda.enable_cudnn_sdp(cudnn)
            sync(device)
            t0 = time.perf_counter()
            fn(p, policy_tokenizer, c, classifier_tokenizer, positive_index, args.n)
            sync(device)
            times[name].append(time.perf_counter() - t0)
            print(f"rep {rep} {name}: {times[name][-1]:.1f}s ({args.n / times[name][-1]:.1f} samples/s)", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{machine(device)}\nmodels={args.models} N={args.n} reps={args.reps}")
    for name, seconds in med.items():
        ratio = f", {med['baseline'] / seconds:.2f}x the baseline" if name != "baseline" else ""
        print(f"{name:20s} median {seconds:.2f}s ({args.n / seconds:.1f} samples/s{ratio})")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_steps(args) -> None:
    """Milliseconds per training step of the `seed` recipe (batch 8, RMSprop, sigmoid, beta 0.1) in the
    trainer variants that led to today's path: stock TRL as the pipeline ran it at a9ca438 (reference
    forward every step, the NaN filter's per-step sync, GPT-2's unfused GELU, fp32) and the lean
    trainer in fp32, TF32 and bf16 autocast, with and without (`-syncs`) its sync-free forward, eager
    or compiled (`-fused`: torch.compile; `-graphs`: also CUDA graphs; `-cudagraphs`: CUDA graphs of
    the eager kernels, torch.compile's `cudagraphs` backend; `-graphs-eageropt`: `-graphs` with the
    optimizer's update not compiled; `-graphs-devlr`: its learning rates on the GPU).
    Pairs are couples of the policy's own samples (63 tokens for random weights). Steps `--warm`..`--steps` are timed, the GPU synchronised at both ends.

    Each variant runs in a fresh process unless `--in-process`: in one process a variant would
    inherit the compiled code and CUDA graphs of the one before (on an H100, fp32 timed after TF32
    replayed TF32's graphs: 18.9-21.7 ms a step against 28-31 ms in a process of its own), and its
    first step would not show its own compilation.
    """
    if not args.in_process and "," in args.variants:
        import re
        import subprocess
        import sys

        results = {}
        for name in args.variants.split(","):
            command = [
                sys.executable,
                __file__,
                "steps",
                "--models",
                args.models,
                "--steps",
                str(args.steps),
                "--warm",
                str(args.warm),
                "--device",
                args.device,
                "--variants",
                name,
            ]
            child = subprocess.run(command, stdout=subprocess.PIPE, text=True)
            line = next((l for l in child.stdout.splitlines() if l.startswith(f"{name} ")), None)
            print(line or f"{name:16s} failed (exit status {child.returncode})", flush=True)
            if line:
                results[name] = float(re.search(r"([\d.]+) ms/step", line)[1])
        tail = child.stdout.split("\n\n", 1)[-1].splitlines()  # the last child's machine line
        print("\n" + "\n".join(tail[:2]) + ", each variant in a fresh process")
        if "stock-fp32" in results:
            for name, ms in results.items():
                print(f"{name:16s} {results['stock-fp32'] / ms:.2f}x stock")
        return
    import numpy as np
    import pandas as pd
    from transformers import TrainerCallback
    from trl import DPOTrainer

    import prefalign.engine.lean_dpo as lean_dpo
    import prefalign.models.loading as loading
    from prefalign.config.schema import SamplingConfig
    from prefalign.engine.decoding import generate
    from prefalign.models.device import pick_device
    from prefalign.stages.train_dpo import train_one
    from prefalign.training.job import DpoJob

    device = pick_device(args.device)
    policy, policy_tokenizer, *_, policy_dir = load_models(args.models, device)
    pairs_needed = 8 * args.steps
    # Decoded eagerly: the pairs' texts are setup, and compiling the decode step would cost each
    # variant's fresh process half a minute on a GPU.
    chunks = generate(policy, policy_tokenizer, 2 * pairs_needed, SamplingConfig(compile_step="eager"), 0)
    texts = [t for chunk in chunks for t in chunk["text"]]
    del policy
    order = np.random.default_rng(0).permutation(len(texts))
    pairs = pd.DataFrame(
        {
            "prompt": policy_tokenizer.bos_token,
            "chosen": [texts[i] for i in order[:pairs_needed]],
            "rejected": [texts[i] for i in order[pairs_needed:]],
        }
    )
    stock = {"precompute_ref_log_probs": False, "logging_nan_inf_filter": True, "compile_step": "eager"}
    # name: (stock TRL?, precision, the lean trainer's sync_free setting, compile_step)
    variants = {
        "stock-fp32": (True, "fp32", "never", "eager"),
        "lean-fp32": (False, "fp32", "gpu", "eager"),
        "lean-tf32": (False, "tf32", "gpu", "eager"),
        "lean-bf16": (False, "bf16", "gpu", "eager"),
        "lean-tf32-syncs": (False, "tf32", "never", "eager"),
        "lean-bf16-syncs": (False, "bf16", "never", "eager"),
        **{f"lean-{p}-{c}": (False, p, "gpu", c) for p in ("fp32", "tf32", "bf16") for c in ("fused", "graphs")},
        # the compiled step with the optimizer's update left eager (what compiling it saves)
        **{f"lean-{p}-graphs-eageropt": (False, p, "gpu", "graphs") for p in ("fp32", "tf32", "bf16")},
        # the compiled update with its learning rates on the GPU (no blocking copy of a CPU scalar per step)
        **{f"lean-{p}-graphs-devlr": (False, p, "gpu", "graphs") for p in ("fp32", "tf32", "bf16")},
        # CUDA graphs of the eager kernels (torch.compile's `cudagraphs` backend): no Triton, no C compiler
        **{f"lean-{p}-cudagraphs": (False, p, "gpu", "graphs") for p in ("fp32", "tf32", "bf16")},
    }

    class StepTimer(TrainerCallback):
        def on_train_begin(self, train_args, state, control, **kwargs):
            self.begin = time.perf_counter()

        def on_step_end(self, train_args, state, control, **kwargs):
            if state.global_step in (1, args.warm, args.steps):
                sync(device)
                names = {1: "first", args.warm: "start", args.steps: "end"}
                setattr(self, names[state.global_step], time.perf_counter())

    results = {}
    with tempfile.TemporaryDirectory() as d:
        pairs.to_parquet(Path(d) / "pairs.parquet")
        for name in args.variants.split(","):
            is_stock, precision, sync_free, compile_step = variants[name]
            saved = lean_dpo.LeanDPOTrainer, loading.fuse_activations, lean_dpo.LeanDPOTrainer.sync_free
            lean_dpo.LeanDPOTrainer.sync_free = sync_free
            lean_dpo.LeanDPOTrainer.compile_backend = "cudagraphs" if name.endswith("-cudagraphs") else "inductor"
            lean_dpo.LeanDPOTrainer.compile_optimizer = not name.endswith("-eageropt")
            lean_dpo.LeanDPOTrainer.lr_on_device = name.endswith("-devlr")
            if is_stock:
                lean_dpo.LeanDPOTrainer, loading.fuse_activations = DPOTrainer, lambda model: model
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            timer = StepTimer()
            try:
                train_one(
                    DpoJob(
                        Path(d) / "pairs.parquet",
                        policy_dir,
                        Path(d) / "m",
                        recipe="seed",
                        loss="sigmoid",
                        beta=0.1,
                        overrides={
                            "max_steps": args.steps,
                            "logging_steps": 50,
                            "compile_step": compile_step,
                            **(stock if is_stock else {}),
                        },
                        device=device,
                        precision=precision,
                    ),
                    log=lambda m: None,
                    callbacks=[timer],
                )
            finally:
                lean_dpo.LeanDPOTrainer, loading.fuse_activations, sync_free = saved
                lean_dpo.LeanDPOTrainer.sync_free = sync_free
            ms = 1000 * (timer.end - timer.start) / (args.steps - args.warm)
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
            results[name] = ms
            print(
                f"{name:16s} {ms:6.1f} ms/step, {8000 / ms:6.0f} pairs/s, peak {peak:.1f} GiB, first step "
                f"{timer.first - timer.begin:.1f}s (compilation included)",
                flush=True,
            )
    print(f"\n{machine(device)}\nmodels={args.models} seed recipe, batch 8, steps {args.warm}..{args.steps} timed")
    if "stock-fp32" in results:
        for name, ms in results.items():
            print(f"{name:16s} {results['stock-fp32'] / ms:.2f}x stock")


def bench_train(args) -> None:
    """Pairs/s of the `default` recipe vs the seed recipe's TRL usage, on pairs of the policy's own samples.

    The pairs are random couples of texts the policy sampled (the lengths of a real run: most texts
    short, some running to max_length), the same for both sides. Baseline: the `seed` recipe with
    stock TRL (`completion_only_head: false`), i.e. the original's usage, reference forward every
    step. Both train one epoch (the same number of steps at batch 8), warmup 0. Wall time covers
    the trainer's construction (the `default` recipe's reference pre-pass), training and nothing
    else; datasets caching is off so no repetition reuses an earlier reference pre-pass.
    """
    import datasets
    import numpy as np
    import pandas as pd

    from prefalign.config.loader import load_config
    from prefalign.engine.decoding import generate
    from prefalign.stages.train_dpo import train_one
    from prefalign.training.job import DpoJob

    datasets.disable_caching()
    policy, policy_tokenizer, *_, policy_dir = load_models(args.models)
    chunks = generate(policy, policy_tokenizer, 2 * args.pairs, load_config("demo").sampling, 0)
    texts = [t for chunk in chunks for t in chunk["text"]]
    order = np.random.default_rng(0).permutation(len(texts))
    pairs = pd.DataFrame(
        {
            "prompt": policy_tokenizer.bos_token,
            "chosen": [texts[i] for i in order[: args.pairs]],
            "rejected": [texts[i] for i in order[args.pairs :]],
        }
    )
    sides = {"seed (stock TRL)": ("seed", {"completion_only_head": False}), "default": ("default", {})}
    times: dict[str, list[float]] = {k: [] for k in sides}
    with tempfile.TemporaryDirectory() as d:
        pairs.to_parquet(Path(d) / "pairs.parquet")
        for rep in range(args.reps):
            for name, (recipe, extra) in sides.items():
                info = train_one(
                    DpoJob(
                        Path(d) / "pairs.parquet",
                        policy_dir,
                        Path(d) / "m",
                        recipe=recipe,
                        loss="sigmoid",
                        beta=0.1,
                        overrides={"num_train_epochs": 1, "warmup_steps": 0, **extra},
                    ),
                    log=lambda m: None,
                )
                times[name].append(info["train_seconds"])
                print(f"rep {rep} {name}: {times[name][-1]:.1f}s ({args.pairs / times[name][-1]:.1f} pairs/s)")
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{machine()}\nmodels={args.models} pairs={args.pairs} reps={args.reps}")
    for k in med:
        print(f"{k:18s} median {med[k]:.1f}s ({args.pairs / med[k]:.1f} pairs/s)")
    base, new = med["seed (stock TRL)"], med["default"]
    print(f"ratio (default / seed pairs/s): {base / new:.2f}x")


def bench_optimizer(args) -> None:
    """Milliseconds per update of the `seed` recipe's RMSprop over GPT-2-small's 124M parameters
    (random weights and gradients): torch's foreach step (eager) against the step compiled by
    `compiled_optimizer.compile_optimizer_step`, both under the recipe's warmup schedule, alternating, the
    device synchronised around each timed step; then the largest weight difference between the two."""
    from transformers import GPT2Config, GPT2LMHeadModel, get_scheduler

    from prefalign.engine.compiled_optimizer import compile_optimizer_step
    from prefalign.models.device import pick_device

    device = pick_device(args.device)
    torch.manual_seed(0)
    models = [GPT2LMHeadModel(GPT2Config()).to(device)]
    models.append(copy.deepcopy(models[0]))
    sides = {}
    for name, model in zip(("eager", "compiled"), models):
        optimizer = torch.optim.RMSprop(model.parameters(), lr=5e-3)
        if name == "compiled":
            compile_optimizer_step(optimizer)
        sides[name] = (
            model,
            optimizer,
            get_scheduler("linear", optimizer, num_warmup_steps=50, num_training_steps=10_000),
        )
    times: dict[str, list[float]] = {name: [] for name in sides}
    for step in range(args.steps):
        grads = [torch.randn_like(p) * 1e-3 for p in models[0].parameters()]
        for name, (model, optimizer, scheduler) in sides.items():
            for p, g in zip(model.parameters(), grads):
                p.grad = g.clone()
            sync(device)
            start = time.perf_counter()
            optimizer.step()
            sync(device)
            if step >= args.warm:
                times[name].append(time.perf_counter() - start)
            scheduler.step()
    for name, seconds in times.items():
        print(f"{name:9s} {1000 * statistics.median(seconds):7.2f} ms per update (median of {len(seconds)})")
    print(
        f"eager / compiled: {statistics.median(times['eager']) / statistics.median(times['compiled']):.2f}x; "
        f"largest weight difference {max(float((a - b).detach().abs().max()) for a, b in zip(*(m.parameters() for m in models))):.2e}"
    )
    print(machine(device))


def machine(device: torch.device | None = None) -> str:
    card = f", {torch.cuda.get_device_name(device)}" if device is not None and device.type == "cuda" else ""
    return (
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores{card}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("sample")
    p.add_argument("--models", default="demo")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p = sub.add_parser("steps")
    p.add_argument("--models", default="demo")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warm", type=int, default=20)
    p.add_argument("--device", default="auto")
    p.add_argument("--variants", default="stock-fp32,lean-fp32,lean-tf32,lean-bf16")
    p.add_argument(
        "--in-process",
        action="store_true",
        help="time every variant in this process (default: each in a fresh one; see bench_steps)",
    )
    p = sub.add_parser("optimizer")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warm", type=int, default=5)
    p.add_argument("--device", default="auto")
    p = sub.add_parser("train")
    p.add_argument("--models", default="demo")
    p.add_argument("--pairs", type=int, default=1024)
    p.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    from prefalign.pipeline.logs import quiet_libraries

    quiet_libraries()
    {"sample": bench_sample, "steps": bench_steps, "optimizer": bench_optimizer, "train": bench_train}[args.what](args)


if __name__ == "__main__":
    main()
