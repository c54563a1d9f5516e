"""torch.compile cold and warm: does an exported compile-cache blob spare a fresh process the compile?

Two fresh interpreters, each with its own empty TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR:
the first compiles (cold) and saves its caches with export_compile_caches(); the second
imports that blob with import_compile_caches() and compiles the same model again (warm).
Each reports the compile time per batch size (the first call of that shape), the cache
hit / miss counters, and how far its outputs are from eager fp32. The farm means to keep such
blobs per (GPU kind, torch version), like TensorRT timing caches.

Not covered by the fresh folders: Inductor's precompiled C++ headers live in
/tmp/torchinductor_$USER whatever TORCHINDUCTOR_CACHE_DIR says, so on a machine that never
compiled before, the cold figure on CPU is a few seconds higher still.

    python benchmarks/torch_compile_cache.py --model resnet50 --mode max-autotune --precision fp16 --batches 32
    python benchmarks/torch_compile_cache.py --model tests.models:small_convnet --input-shape 3,32,32 --batches 4,1 --device cpu
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

STARTED = time.perf_counter()
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One fresh process: (import the blob,) compile every batch size, (export the blob)."""
    import numpy as np
    import torch
    from torch._dynamo.utils import counters

    from workers.backends.torch.compile_cache import export_compile_caches, import_compile_caches
    from workers.backends.torch.engines import INPUT
    from workers.backends.torch.kinds import open_engine
    from workers.backends.torch.options import TorchEngineOptions
    from workers.models import load_module
    from workers.structs import ModelRef

    report: dict[str, Any] = {"phase": args.child, "import_s": time.perf_counter() - STARTED, "cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR")}
    if args.child == "warm":
        started = time.perf_counter()
        report["imported_artifacts"] = import_compile_caches(args.blob.read_bytes())
        report["cache_import_s"] = time.perf_counter() - started
    source = args.model if ":" in args.model else f"torchvision:{args.model}"
    module = load_module(ModelRef(args.model, source, None, args.input_shape))
    rng = np.random.default_rng(0)
    inputs = {b: rng.standard_normal((b, *args.input_shape)).astype(np.float32) for b in args.batches}
    with open_engine(copy.deepcopy(module), TorchEngineOptions(), args.device, args.input_shape) as eager:
        reference = {b: eager.infer({INPUT: x})[0] for b, x in inputs.items()}
    options = TorchEngineOptions(kind="compile", compile_mode=args.mode, precision=args.precision, channels_last=args.channels_last)
    errors = {}
    with open_engine(module, options, args.device, args.input_shape) as runner:
        for batch, x in inputs.items():
            errors[batch] = float(np.abs(runner.infer({INPUT: x})[0] - reference[batch]).max())
        report["compile_s"] = dict(runner.setup_seconds)
    report["max_abs_error"] = errors
    report["counters"] = {group: {k: v for k, v in counters[group].items() if "cache" in k} for group in ("inductor", "aot_autograd")}
    if args.child == "cold":
        blob = export_compile_caches()
        args.blob.write_bytes(blob or b"")
        report["blob_bytes"] = len(blob or b"")
    report["total_s"] = time.perf_counter() - STARTED
    report["torch"] = torch.__version__
    return report


def run_child(args: argparse.Namespace, phase: str, blob: Path, folder: Path) -> dict[str, Any]:
    caches = {name: tempfile.mkdtemp(prefix=f"{phase}-{name.lower()}-", dir=folder) for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    command = [sys.executable, __file__, "--child", phase, "--blob", str(blob), "--model", args.model,
               "--input-shape", ",".join(map(str, args.input_shape)), "--batches", ",".join(map(str, args.batches)),
               "--mode", args.mode, "--precision", args.precision, "--device", args.device,
               "--channels-last" if args.channels_last else "--no-channels-last"]
    started = time.perf_counter()
    done = subprocess.run(command, env=os.environ | caches, capture_output=True, text=True, timeout=args.timeout)
    if done.returncode != 0:
        raise SystemExit(f"{phase} process failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    report["process_s"] = time.perf_counter() - started
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50", help="torchvision name, or package.module:function")
    parser.add_argument("--input-shape", default=(3, 224, 224), type=lambda s: tuple(int(d) for d in s.split(",")))
    parser.add_argument("--batches", default=(32,), type=lambda s: tuple(int(b) for b in s.split(",")))
    parser.add_argument("--mode", default="default", help="torch.compile mode")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per process")
    parser.add_argument("--out", type=Path, help="JSON with both reports")
    parser.add_argument("--child", choices=("cold", "warm"), help=argparse.SUPPRESS)
    parser.add_argument("--blob", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.child:
        print(json.dumps(child(args)))
        return 0
    with tempfile.TemporaryDirectory(prefix="farm-compile-cache-") as tmp:
        folder, blob = Path(tmp), Path(tmp, "caches.bin")
        cold = run_child(args, "cold", blob, folder)
        warm = run_child(args, "warm", blob, folder)
    print(f"{'process':<6} {'batch':>5} {'compile s':>10} {'max err':>9}   cache counters")
    for report in (cold, warm):
        for batch, seconds in report["compile_s"].items():
            print(f"{report['phase']:<6} {batch:>5} {seconds:>10.2f} {report['max_abs_error'][batch]:>9.2e}   {report['counters']}")
    print(f"blob {cold['blob_bytes'] / 1e6:.2f} MB; process wall time cold {cold['process_s']:.1f} s, warm {warm['process_s']:.1f} s "
          f"(import of the blob {warm['cache_import_s']:.2f} s)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "cold": cold, "warm": warm}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
