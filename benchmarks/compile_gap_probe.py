"""Why the farm's compiled ResNet-50 is slower than the same compile written by hand: one process, one GPU.

On an H100 (2026-12-06) the farm's `compile:max-autotune fp16 channels_last freezing` engine spent
12.34 ms of GPU time per batch of 256, where plain PyTorch with the same Inductor options had spent
about 10.1 ms in an earlier window. This probe compiles ResNet-50 (random weights) the ways that
differ between the two, in the order below, and times every one the same way (CUDA events around
one call, median of --calls), so the variant that loses the time names the cause:

  plain       torch._inductor.config.freezing = True; torch.compile(mode="max-autotune"); calls under no_grad
  plain_im    the same, calls under inference_mode (the farm's runner calls under inference_mode)
  farm        the farm's own runner (workers.backends.torch.open_engine) with the engine's options, no Ray
  farm_ray    the same runner inside a Ray task that holds the GPU (as a farm worker runs it)

Later variants reuse the first one's autotuning through Inductor's caches, so they compile faster.
A variant is skipped once --budget-s is spent.

Found with it (H100, 2026-12-06; docs/gpu.md): plain 10.35 ms, the farm's runner 11.38 ms, because
the farm gave freezing in torch.compile's options, where it is silently not applied
(pytorch/pytorch#139272). The runner now patches Inductor's config around the compiling calls.

    PYTHONPATH=/tmp/site:$PWD python3 benchmarks/compile_gap_probe.py --out $OUT/compile_gap_probe.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BATCH = 256


def timed_calls(call: Callable[[], Any], calls: int) -> dict[str, float]:
    """Median and spread of `calls` single calls, each between two CUDA events."""
    import torch

    for _ in range(10):
        call()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(calls):
        start.record()
        call()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    median = statistics.median(times)
    return {"median_ms": median, "min_ms": min(times), "images_per_s": BATCH * 1000 / median}


def resnet50() -> Any:
    import torch
    import torchvision

    return torchvision.models.resnet50(weights=None).eval().cuda().half().to(memory_format=torch.channels_last)


def batch_input() -> Any:
    import torch

    return torch.randn(BATCH, 3, 224, 224, device="cuda").half().contiguous(memory_format=torch.channels_last)


def plain(grad_context: str, calls: int) -> dict[str, Any]:
    import torch

    torch._inductor.config.freezing = True
    torch._dynamo.reset()
    module, x = resnet50(), batch_input()
    compiled = torch.compile(module, mode="max-autotune", dynamic=False)
    context = torch.no_grad if grad_context == "no_grad" else torch.inference_mode

    def call() -> Any:
        torch.compiler.cudagraph_mark_step_begin()
        with context():
            return compiled(x)

    started = time.perf_counter()
    for _ in range(3):
        call()
    torch.cuda.synchronize()
    compile_s = time.perf_counter() - started
    torch._inductor.config.freezing = False
    return {"compile_s": compile_s, **timed_calls(call, calls)}


def farm_runner(calls: int) -> dict[str, Any]:
    """The farm's CompileRunner, driven the way its benchmark drives it (no data transfers)."""
    import numpy as np
    import torch

    from workers.backends.torch import TorchEngineOptions, open_engine

    torch._dynamo.reset()
    options = TorchEngineOptions(kind="compile", precision="fp16", compile_mode="max-autotune", channels_last=True, freezing=True)
    runner = open_engine(resnet50().float(), options, "cuda", (3, 224, 224))
    feeds = {"input": np.random.default_rng(0).standard_normal((BATCH, 3, 224, 224), dtype=np.float32)}
    with runner:
        started = time.perf_counter()
        step = runner._prepare(feeds, data_transfers=False)
        compile_s = time.perf_counter() - started
        result = {"compile_s": compile_s, "inductor_options": options.inductor_options(), **timed_calls(step, calls)}
    return result


def farm_in_ray(calls: int) -> dict[str, Any]:
    import ray

    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, logging_level="ERROR")  # workers inherit PYTHONPATH
    try:
        task = ray.remote(num_gpus=1)(farm_runner)
        return ray.get(task.remote(calls))
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--budget-s", type=float, default=330)
    parser.add_argument("--only", nargs="+", default=["plain", "farm", "farm_ray", "plain_im"])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import torch

    variants: dict[str, Callable[[], dict[str, Any]]] = {
        "plain": lambda: plain("no_grad", args.calls),
        "farm": lambda: farm_runner(args.calls),
        "farm_ray": lambda: farm_in_ray(args.calls),
        "plain_im": lambda: plain("inference_mode", args.calls),
    }
    began = time.perf_counter()
    rows: dict[str, Any] = {}
    print(f"{'variant':10} {'compile s':>9} {'median ms':>9} {'img/s':>8}", flush=True)
    for name in args.only:
        if time.perf_counter() - began > args.budget_s:
            rows[name] = {"skipped": f"budget of {args.budget_s:.0f} s spent"}
            print(f"{name:10} skipped: budget spent", flush=True)
            continue
        try:
            rows[name] = variants[name]()
        except Exception as error:  # one variant's failure is a finding, not the end of the probe
            rows[name] = {"error": f"{type(error).__name__}: {error}"[:2000]}
            print(f"{name:10} failed: {rows[name]['error'][:300]}", flush=True)
            continue
        r = rows[name]
        print(f"{name:10} {r['compile_s']:9.1f} {r['median_ms']:9.3f} {r['images_per_s']:8.0f}", flush=True)
    result = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "gpu": torch.cuda.get_device_name(0),
              "torch": torch.__version__, "model": "resnet50 fp16 channels_last, batch 256", "variants": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, default=str))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
