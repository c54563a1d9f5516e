"""PyTorch engine kinds side by side: eager, CUDA graph replay, torch.compile, AOTInductor.

For each kind x precision x batch the engine is built or prepared through workers.backends.torch
(its aoti module for aoti) and timed with workers.bench.measure, as the farm times every
backend: p50 end to end (copies included unless --no-data-transfers), GPU compute alone from
CUDA events, the coefficient of variation, images/s, and the setup it cost (the compile for
compile, build + first call for aoti, warm-up + capture for cuda_graph, first call for eager).
Outputs are compared with eager fp32 on the same inputs; SM clocks are read before and after
each measurement. Results are written after every engine, so a crash or a time limit keeps
what was measured.

An aoti package is first loaded and run in a fresh interpreter (check_aoti_package): loading
segfaulted on the H200 with torch 2.11, and a crash must not end the whole run.

    python benchmarks/torch_engine_kinds.py                      # resnet50 on the GPU
    python benchmarks/torch_engine_kinds.py --kinds eager,cuda_graph,compile:max-autotune --precisions fp16
    python benchmarks/torch_engine_kinds.py --quick --model tests.models:small_convnet --input-shape 3,32,32 --batches 1,4
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workers.bench import BenchSettings, measure  # noqa: E402
from workers.models import load_module  # noqa: E402
from workers.structs import ModelRef  # noqa: E402
from workers.backends.torch.aoti import build_aoti_package, check_aoti_package  # noqa: E402
from workers.backends.torch.compile_cache import export_compile_caches, import_compile_caches  # noqa: E402
from workers.backends.torch.engines import INPUT  # noqa: E402
from workers.backends.torch.kinds import open_engine  # noqa: E402
from workers.backends.torch.options import KINDS, TorchEngineOptions  # noqa: E402
from workers.device import gpu_clocks  # noqa: E402

QUICK = BenchSettings(warmup_s=0.05, duration_s=0.2, min_iterations=5)
FULL = BenchSettings(warmup_s=0.5, duration_s=3.0, min_iterations=50)


def parse_kind(text: str) -> tuple[str, str | None]:
    """'compile:max-autotune' -> ('compile', 'max-autotune'); 'eager' -> ('eager', None)."""
    kind, _, mode = text.partition(":")
    if kind not in KINDS:
        raise argparse.ArgumentTypeError(f"kind {kind!r}: expected one of {', '.join(KINDS)} (compile:MODE for a compile mode)")
    return kind, mode or None


def model_ref(name: str, input_shape: tuple[int, ...]) -> ModelRef:
    source = name if ":" in name else f"torchvision:{name}"  # a factory is package.module:function
    return ModelRef(name.rsplit(":", 1)[-1], source, None, input_shape)


def compare(reference: np.ndarray, output: np.ndarray) -> dict[str, float]:
    ref, out = reference.reshape(len(reference), -1).astype(np.float64), output.reshape(len(output), -1).astype(np.float64)
    cosine = (ref * out).sum(1) / np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1), 1e-30)
    return {"max_abs_error": float(np.abs(ref - out).max()), "cosine_min": float(cosine.min())}


def gpu_index(device: str) -> int:
    """The NVML index to read clocks from: CUDA's index, right unless CUDA_VISIBLE_DEVICES reorders GPUs."""
    import torch

    return (torch.device(device).index or 0) if device.startswith("cuda") else 0


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    settings = QUICK if args.quick else BenchSettings(FULL.warmup_s, args.duration, FULL.min_iterations)
    ref = model_ref(args.model, args.input_shape)
    base = load_module(ref)  # random weights (seeded): the speed does not depend on them
    rng = np.random.default_rng(args.seed)
    inputs = {b: rng.standard_normal((b, *args.input_shape)).astype(np.float32) for b in args.batches}
    result: dict[str, Any] = {
        "meta": {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": ref.source, "input_shape": list(args.input_shape), "device": device,
            "gpu": torch.cuda.get_device_name(device) if device.startswith("cuda") else None,
            "cpu": platform.processor() or platform.machine(), "cpu_threads": torch.get_num_threads(),
            "torch": torch.__version__, "settings": vars(settings), "data_transfers": args.data_transfers,
            "channels_last": args.channels_last, "tf32": args.tf32, "python": platform.python_version(),
        },
        "rows": [], "skipped": [], "errors": [],
    }
    if args.compile_cache_in:
        result["meta"]["compile_cache_imported"] = import_compile_caches(args.compile_cache_in.read_bytes())

    # eager fp32 (TF32 off) on the same inputs: the reference every other engine is compared with
    with open_engine(copy.deepcopy(base), TorchEngineOptions(), device, args.input_shape) as eager:
        reference = {b: eager.infer({INPUT: x})[0] for b, x in inputs.items()}

    def save() -> None:
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2, default=str))

    for kind, mode in args.kinds:
        for precision in args.precisions:
            try:
                options = TorchEngineOptions(
                    kind=kind, precision=precision, compile_mode=mode,
                    channels_last=args.channels_last, tf32=args.tf32 and precision == "fp32" and device.startswith("cuda"),
                )
                options.check_device(device)
            except ValueError as exc:
                result["skipped"].append({"kind": kind, "mode": mode, "precision": precision, "reason": str(exc)})
                print(f"skip {kind} {precision}: {exc}", flush=True)
                continue
            print(f"{options.label}: building", flush=True)
            try:
                engine, built = build(base, options, device, args)
                if engine is None:
                    result["errors"].append({"engine": options.label, **built})
                    save()
                    continue
                with open_engine(engine, options, device, args.input_shape) as runner:
                    for batch in args.batches:
                        x = inputs[batch]
                        before = gpu_clocks(gpu_index(device))
                        step = runner.prepare({INPUT: x}, data_transfers=args.data_transfers)
                        timings = measure(step, batch, settings, synchronize=runner.synchronize, gpu_timer=runner.gpu_timer())
                        after = gpu_clocks(gpu_index(device))
                        row = {
                            "kind": kind, "compile_mode": mode, "precision": precision, "label": options.label, "batch": batch,
                            "latency_p50_ms": timings.latency.median, "latency_p99_ms": timings.latency.p99,
                            "latency_cv": timings.latency.cv,
                            "gpu_compute_p50_ms": timings.gpu_compute.median if timings.gpu_compute else None,
                            "gpu_compute_cv": timings.gpu_compute.cv if timings.gpu_compute else None,
                            "images_per_s": timings.throughput, "iterations": timings.iterations,
                            "setup_s": runner.setup_seconds.get(batch), "build": built,
                            "clocks_start": before, "clocks_end": after,
                            **compare(reference[batch], runner.infer({INPUT: x})[0]),
                        }
                        result["rows"].append(row)
                        print_row(row)
                        save()
            except Exception as exc:  # one engine failing (a compile error, out of memory) must not lose the others
                result["errors"].append({"engine": options.label, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-3000:]})
                print(f"{options.label}: FAILED {type(exc).__name__}: {exc}", flush=True)
            save()
    if args.compile_cache_out:
        blob = export_compile_caches()
        if blob:
            args.compile_cache_out.write_bytes(blob)
        result["meta"]["compile_cache_exported_bytes"] = len(blob) if blob else 0
    save()
    return result


def build(base: Any, options: TorchEngineOptions, device: str, args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The engine to open (a fresh copy of the module, or aoti package bytes) and what building it cost."""
    module = copy.deepcopy(base)  # prepare_module casts in place: never cast the shared fp32 original
    if options.kind != "aoti":
        return module, {}
    package = build_aoti_package(module, args.input_shape, args.batches, options, device)
    info: dict[str, Any] = {
        "export_s": package.export_seconds, "compile_s": package.compile_seconds, "size_mb": package.size_bytes / 1e6,
        "peak_rss_mb": package.peak_rss_bytes / 1e6, "peak_children_rss_mb": package.peak_children_rss_bytes / 1e6,
    }
    print(f"  aoti: export {package.export_seconds:.1f} s, compile {package.compile_seconds:.1f} s, {package.size_bytes / 1e6:.1f} MB", flush=True)
    if args.aoti_check:
        check = check_aoti_package(package.data, device)
        info |= {"check_ok": check.ok, "check_s": check.seconds, "check_detail": check.detail[-1500:]}
        if not check.ok:
            print(f"  aoti: loading in a fresh process failed ({check.detail.splitlines()[0] if check.detail else ''}); not loading it here", flush=True)
            return None, info
    return package.data, info


HEADER = f"{'engine':<38} {'batch':>5} {'p50 ms':>9} {'GPU p50':>9} {'CV':>6} {'images/s':>10} {'setup s':>8} {'max err':>9}"


def print_row(row: dict[str, Any]) -> None:
    gpu = f"{row['gpu_compute_p50_ms']:.3f}" if row["gpu_compute_p50_ms"] is not None else "-"
    setup = row["setup_s"] + row["build"].get("compile_s", 0) + row["build"].get("export_s", 0) if row["setup_s"] is not None else None
    print(
        f"{row['label']:<38} {row['batch']:>5} {row['latency_p50_ms']:>9.3f} {gpu:>9} {row['latency_cv']:>6.1%} "
        f"{row['images_per_s']:>10.1f} {setup if setup is None else f'{setup:.1f}':>8} {row['max_abs_error']:>9.2e}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50", help="torchvision name, or package.module:function (default resnet50)")
    parser.add_argument("--input-shape", default=(3, 224, 224), type=lambda s: tuple(int(d) for d in s.split(",")))
    parser.add_argument("--batches", default=(1, 8, 32, 128, 256), type=lambda s: tuple(int(b) for b in s.split(",")))
    parser.add_argument("--kinds", default=[parse_kind(k) for k in KINDS], type=lambda s: [parse_kind(k) for k in s.split(",")],
                        help="comma-separated; compile:MODE picks a torch.compile mode (default: eager,cuda_graph,compile,aoti)")
    parser.add_argument("--precisions", default=("fp32", "fp16"), type=lambda s: tuple(s.split(",")))
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--tf32", action="store_true", help="fp32 engines on CUDA use TF32 (cuBLAS and cuDNN)")
    parser.add_argument("--data-transfers", action=argparse.BooleanOptionalAction, default=True,
                        help="copy the input in and the outputs out on each step (--no-data-transfers: trtexec's --noDataTransfers)")
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    parser.add_argument("--aoti-check", action=argparse.BooleanOptionalAction, default=True,
                        help="load each aoti package in a fresh process before loading it here")
    parser.add_argument("--compile-cache-in", type=Path, help="import torch.compile caches from this blob first")
    parser.add_argument("--compile-cache-out", type=Path, help="export this process's torch.compile caches here at the end")
    parser.add_argument("--duration", type=float, default=FULL.duration_s, help="seconds of timed steps per engine and batch (after 0.5 s of warm-up)")
    parser.add_argument("--quick", action="store_true", help=f"short timing ({QUICK.duration_s} s per engine and batch)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="JSON results (written after every engine)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    print(HEADER, flush=True)
    result = run(args)
    print(f"{len(result['rows'])} rows, {len(result['skipped'])} skipped, {len(result['errors'])} errors in {time.perf_counter() - started:.0f} s"
          + (f"; written to {args.out}" if args.out else ""), flush=True)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
