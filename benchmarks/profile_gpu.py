"""Where a decode step and a training step spend their time on a GPU: torch.profiler tables.

On the GPT-2-small / DistilBERT-base shaped models of bench_engine.py (random weights): times the
engine's decode loop at full batch against the bare forward passes it makes, then profiles a
decode loop, the whole sample + score engine (warmed up on the same shapes), one evaluation run
(with the KL's log-probs and the run's metrics, each phase timed) and a few training steps of the
lean trainer, printing the top operations by GPU and by CPU time and the host-sync calls
(cudaStreamSynchronize and friends; for training also the stack of each sync).

    python benchmarks/profile_gpu.py [--batch 2048] [--precision tf32]
    python benchmarks/profile_gpu.py --device cpu --batch 64 --texts 200 --models DIR   # a smoke run anywhere
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import pstats
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import build_base_sized, sync  # noqa: E402

SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpyAsync")


def tables(prof, title: str) -> None:
    events = prof.key_averages()
    print(f"\n### {title}: top operations by GPU time")
    print(events.table(sort_by="self_device_time_total", row_limit=14, max_name_column_width=60))
    print(f"### {title}: top operations by CPU time")
    print(events.table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=60))
    for event in events:
        if event.key in SYNC_CALLS:
            print(f"{event.key}: {event.count} calls, {event.cpu_time_total / 1000:.1f} ms CPU")


def activities(device: torch.device) -> list:
    return [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])


def timed(fn, device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def profile_decode(policy_dir: str, batch: int, device: torch.device) -> None:
    from transformers import DynamicCache, StaticCache

    from prefalign.config.schema import SamplingConfig
    from prefalign.engine.decode_step import compiled_step
    from prefalign.engine.decoding import _fast_batch, _static_batch
    from prefalign.models.device import inference_dtype
    from prefalign.models.loading import load_policy

    policy, tokenizer = load_policy(policy_dir, None, device, inference_dtype(device))
    prompt = torch.full((batch, 1), tokenizer.bos_token_id, device=device)
    sampling = SamplingConfig()
    static_cache = StaticCache(config=policy.config, max_cache_len=sampling.max_length)

    @torch.inference_mode()
    def bare_forwards():  # the decode loop's forward passes alone: greedy, no filtering
        cache, step = DynamicCache(config=policy.config), prompt
        for _ in range(sampling.max_length - 1):
            step = (
                policy(input_ids=step, use_cache=True, past_key_values=cache, logits_to_keep=1)
                .logits[:, -1]
                .argmax(-1, keepdim=True)
            )

    @torch.inference_mode()
    def engine():
        _fast_batch(policy, prompt, tokenizer.eos_token_id, sampling)

    @torch.inference_mode()
    def compiled():  # sampling.compile_step: graphs (the default on CUDA)
        _static_batch(policy, prompt, tokenizer.eos_token_id, sampling, compiled_step("graphs"), static_cache)

    loops = [("eager decode loop", engine), ("bare forwards", bare_forwards), ("compiled decode loop", compiled)]
    for name, fn in loops:  # warm-up; the compiled loop's first call compiles
        print(f"{name}: first call {timed(fn, device):.1f}s")
    steps = sampling.max_length - 1
    for name, fn in loops:
        seconds = timed(fn, device)
        print(
            f"{name}: {seconds:.2f}s for {batch} rows x {steps} steps ({1000 * seconds / steps:.1f} ms/step, "
            f"{batch / seconds:.0f} rows/s), dtype {policy.dtype}"
        )
    for name, fn in (("eager decode", engine), ("compiled decode", compiled)):
        with profile(activities=activities(device)) as prof:
            fn()
            sync(device)
        tables(prof, f"{name}, {batch} rows x {steps} steps")


def profile_sampling(policy_dir: str, reward_dir: str, n: int, device: torch.device, evaluation: bool) -> None:
    """sample_and_score as the sample stage runs it (decode, ids to text, classifier tokenization and
    scoring, Parquet: where the time outside the decode loop goes) or, with `evaluation`, as an
    evaluation run does (with the KL's reference model, then the run's metrics; each phase timed):
    its seconds after a warm-up on the same shapes, and its profiler table."""
    from prefalign.config.schema import SamplingConfig
    from prefalign.engine.sample_file import sample_and_score
    from prefalign.models.device import inference_dtype
    from prefalign.models.loading import load_classifier, load_policy
    from prefalign.stages.evaluate import run_metrics

    dtype = inference_dtype(device)
    policy, policy_tokenizer = load_policy(policy_dir, None, device, dtype)
    classifier, classifier_tokenizer = load_classifier(reward_dir, None, device, dtype)
    reference = load_policy(policy_dir, None, device, dtype)[0] if evaluation else None  # the original: same weights
    with tempfile.TemporaryDirectory() as d:

        def run(with_reference: bool):
            return sample_and_score(
                policy,
                policy_tokenizer,
                classifier,
                classifier_tokenizer,
                1,
                n,
                SamplingConfig(),
                0,
                None,
                Path(d) / "s.parquet",
                reference=reference if with_reference else None,
            )

        for with_reference in (False, True) if evaluation else (False,):  # warm-up: the timed calls' batch shapes
            run(with_reference)
        plain = timed(lambda: run(False), device)
        if evaluation:
            with_kl = timed(lambda: run(True), device)
            df = run(True)
            start = time.perf_counter()
            run_metrics(df, policy_tokenizer, (0.0, 0.5))
            metrics = time.perf_counter() - start
            print(
                f"\nevaluation run of {n} texts, dtype {dtype}: sample + score {plain:.2f}s, with the KL's log-probs "
                f"{with_kl:.2f}s (+{with_kl - plain:.2f}s), run metrics {metrics:.2f}s: "
                f"{n / (with_kl + metrics):.0f} texts/s"
            )
        else:
            print(f"\nsample_and_score: {n} texts in {plain:.2f}s ({n / plain:.0f} texts/s), dtype {dtype}")
        with profile(activities=activities(device)) as prof:
            run(evaluation)
            sync(device)
    tables(
        prof,
        f"evaluation run (sample + score + KL log-probs), {n} texts" if evaluation else f"sample_and_score, {n} texts",
    )


def host_operations(prof, steps: int) -> None:
    """Torch operations dispatched from the host per step (those not called by another operation),
    and what called them: each costs host time, and on a GPU each kernel among them a launch."""
    from collections import Counter

    top = [
        e
        for e in prof.events()
        if e.name.startswith("aten::") and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
    ]
    callers = Counter((e.cpu_parent.name.split("/")[-1][:70] if e.cpu_parent else "-") for e in top)
    print(
        f"host-dispatched torch operations: {len(top) / steps:.0f} per step; by caller, per step: "
        + ", ".join(f"{name} {count / steps:.0f}" for name, count in callers.most_common(8))
    )


def profile_train(policy_dir: str, precision: str, device: torch.device, compile_step: str = "auto") -> None:
    import pandas as pd
    from transformers import TrainerCallback

    from prefalign.stages.train_dpo import train_one
    from prefalign.training.job import DpoJob

    words = [f" w{i}" for i in range(50, 3000)]
    rng = torch.Generator().manual_seed(0)
    texts = [
        "".join(words[i] for i in torch.randint(0, len(words), (int(n),), generator=rng))
        for n in torch.randint(20, 63, (800,), generator=rng)
    ]
    pairs = pd.DataFrame({"prompt": "<|endoftext|>", "chosen": texts[:400], "rejected": texts[400:]})

    class Profiled(TrainerCallback):
        def __init__(self):
            self.prof = profile(activities=activities(device))

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 20:  # first the host's Python alone (cProfile), then the kernels
                sync(device)
                self.python = cProfile.Profile()
                self.python.enable()
                self.python_start = time.perf_counter()
            if state.global_step == 30:
                sync(device)
                self.python_seconds = time.perf_counter() - self.python_start
                self.python.disable()
                self.prof.__enter__()
                self.start = time.perf_counter()
            if state.global_step == 40:
                sync(device)
                self.seconds = time.perf_counter() - self.start
                self.prof.__exit__(None, None, None)
                # Steps 41-43: where each host sync comes from (torch warns, with our stack, at every sync).
                self.syncs, self.shown, self.filters = collections.Counter(), warnings.showwarning, warnings.filters[:]
                warnings.simplefilter("always")
                warnings.showwarning = lambda message, *a, **k: (
                    "synchroniz" in str(message)
                    and self.syncs.update(
                        [
                            "\n      ".join(
                                f"{f.filename.split('site-packages/')[-1]}:{f.lineno} {f.name}"
                                for f in traceback.extract_stack()[-10:-2]
                                if not f.filename.endswith("warnings.py")
                            )
                        ]
                    )
                )
                if device.type == "cuda":
                    torch.cuda.set_sync_debug_mode("warn")
            if state.global_step == 43:
                if device.type == "cuda":
                    torch.cuda.set_sync_debug_mode("default")
                warnings.showwarning, warnings.filters[:] = self.shown, self.filters

    from transformers import AutoConfig

    context = getattr(AutoConfig.from_pretrained(policy_dir), "n_positions", 256)
    callback = Profiled()
    with tempfile.TemporaryDirectory() as d:
        pairs.to_parquet(Path(d) / "pairs.parquet")
        train_one(
            DpoJob(
                Path(d) / "pairs.parquet",
                policy_dir,
                Path(d) / "m",
                recipe="seed",
                loss="sigmoid",
                beta=0.1,
                overrides={
                    "max_steps": 45,
                    "logging_steps": 50,
                    "max_length": min(256, context),
                    "compile_step": compile_step,
                },
                device=device,
                precision=precision,
            ),
            log=lambda m: None,
            callbacks=[callback],
        )
    print(
        f"\ntraining steps 20..30 under cProfile: {100 * callback.python_seconds:.1f} ms/step ({precision}); "
        "the host's Python by cumulative time:"
    )
    pstats.Stats(callback.python).sort_stats("cumulative").print_stats(40)
    print(f"\ntraining steps 30..40 under the profiler: {100 * callback.seconds:.1f} ms/step ({precision})")
    tables(callback.prof, f"training, lean trainer, {precision}, compile_step {compile_step}")
    host_operations(callback.prof, 10)
    print(
        f"\nhost syncs in steps 41-43 (torch.cuda.set_sync_debug_mode), {sum(callback.syncs.values())} in all, by stack:"
    )
    for stack, count in callback.syncs.most_common(8):
        print(f"  {count} x\n      {stack}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--texts", type=int, default=5000, help="texts for the sample_and_score profile")
    parser.add_argument("--precision", default="tf32")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", default=str(Path(tempfile.gettempdir()) / "prefalign-bench-base"))
    parser.add_argument(
        "--parts", default="decode,sample,evaluate,train", help="which of decode, sample, evaluate, train to profile"
    )
    parser.add_argument("--compile-step", default="auto", help="train.dpo.compile_step of the train part")
    args = parser.parse_args()
    parts = args.parts.split(",")
    from prefalign.pipeline.logs import quiet_libraries

    quiet_libraries()
    device = torch.device(args.device)
    policy_dir, reward_dir = build_base_sized(Path(args.models))
    print(f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}")
    if "decode" in parts:
        profile_decode(policy_dir, args.batch, device)
    for part in ("sample", "evaluate"):
        if part in parts:
            profile_sampling(policy_dir, reward_dir, args.texts, device, evaluation=part == "evaluate")
    if "train" in parts:
        profile_train(policy_dir, args.precision, device, args.compile_step)


if __name__ == "__main__":
    main()
