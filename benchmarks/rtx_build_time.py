"""TensorRT-RTX build time per model x precision x number of compute capabilities, on this CPU.

Every build goes through `TensorRTBackend.build` (the code path the farm runs), with a 1..8
batch profile. Variants are made here the way docs/precision.md describes (fp16 by
onnxconverter-common, int8 Q/DQ by ONNX Runtime from random calibration batches: fine for
build time and size, meaningless for accuracy). "peak MB" is the most resident memory a
build added (sampled, see PeakMemory); "plans" counts distinct plan hashes over the repeats.
A second table builds resnet18 fp32 at each optimization level and a few workspace limits,
to show which of them change the build.

    python benchmarks/rtx_build_time.py [--repeats 3] [--out benchmarks/results/rtx_build_time.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workers.backends.tensorrt import BuildError, TensorRTBackend  # noqa: E402
from workers.models import export  # noqa: E402
from workers.structs import BuildRequest, ModelRef, Target  # noqa: E402

MODELS = (
    ModelRef("resnet18", "torchvision:resnet18", None, (3, 224, 224)),
    ModelRef("mobilenet_v3_small", "torchvision:mobilenet_v3_small", None, (3, 224, 224)),
)
CAPABILITIES = (["sm_89"], ["sm_86", "sm_89"])
BATCHES = (1, 8)


def fp16_variant(onnx_bytes: bytes) -> bytes:
    from onnxconverter_common import float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the float32 number ... will be truncated": expected for tiny weights
        model = float16.convert_float_to_float16(onnx.load_from_string(onnx_bytes), keep_io_types=True)
    return bytes(model.SerializeToString())


def int8_variant(onnx_bytes: bytes, input_shape: tuple[int, ...], samples: int = 8) -> bytes:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Noise(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self._batches = iter([{"input": rng.standard_normal((1, *input_shape)).astype(np.float32)} for _ in range(samples)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(onnx_bytes)
        quantize_static(
            str(source), str(target), Noise(),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "AddQDQPairToWeight": True,
                           "QuantizeBias": False, "DedicatedQDQPair": True},
        )  # fmt: skip
        return target.read_bytes()


def build_times(model: ModelRef, precision: str, variant: bytes, options: dict[str, Any], repeats: int) -> dict[str, Any]:
    backend = TensorRTBackend(log_severity="warning")
    seconds, digests, size, peak = [], set(), 0, 0
    for _ in range(repeats):
        request = BuildRequest(model, precision, "tensorrt", options, Target("rtx", "sm_89", "8.9"), BATCHES)
        engine = backend.build(request, variant, None)
        seconds.append(engine.seconds)
        digests.add(hashlib.sha256(engine.plan).hexdigest()[:12])
        size = len(engine.plan)
        peak = max(peak, engine.peak_host_memory_bytes or 0)
    return {
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "plan_mb": size / 1e6,
        "distinct_plans": sorted(digests),
        "peak_rss_growth_mb": peak / 1e6,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "rtx_build_time.json")
    args = parser.parse_args()
    import tensorrt_rtx

    load_before = os.getloadavg()  # the builds share the machine: noise is worth knowing
    rows: list[dict[str, Any]] = []
    variants_made: list[dict[str, Any]] = []
    resnet_fp32 = b""
    for model in MODELS:
        started = time.perf_counter()
        fp32 = export(model).onnx_bytes
        made = {"model": model.name, "export_s": time.perf_counter() - started}
        started = time.perf_counter()
        fp16 = fp16_variant(fp32)
        made["fp16_convert_s"] = time.perf_counter() - started
        started = time.perf_counter()
        int8 = int8_variant(fp32, model.input_shape)
        made["int8_quantize_s"] = time.perf_counter() - started
        variants_made.append(made)
        if model.name == "resnet18":
            resnet_fp32 = fp32
        for precision, variant in (("fp32", fp32), ("fp16", fp16), ("int8", int8)):
            for capabilities in CAPABILITIES:
                result = build_times(model, precision, variant, {"compute_capabilities": capabilities}, args.repeats)
                row = {"model": model.name, "precision": precision, "targets": capabilities, "onnx_mb": len(variant) / 1e6}
                rows.append({**row, **result})
                print(f"{model.name:<20} {precision:<5} {'+'.join(capabilities):<12} {result['median_s']:6.2f} s  "
                      f"{result['plan_mb']:7.2f} MB", file=sys.stderr, flush=True)  # fmt: skip

    knobs: list[dict[str, Any]] = []
    resnet = MODELS[0]
    two = {"compute_capabilities": ["sm_86", "sm_89"]}
    for level in range(6):
        result = build_times(resnet, "fp32", resnet_fp32, {**two, "optimization_level": level}, args.repeats)
        knobs.append({"option": f"optimization_level={level}", **result})
    for workspace in ("32MiB", "64MiB", "1GiB", "unlimited"):
        try:
            result = build_times(resnet, "fp32", resnet_fp32, {**two, "workspace": workspace}, args.repeats)
        except BuildError as exc:
            result = {"error": str(exc).splitlines()[0][:160]}
        knobs.append({"option": f"workspace={workspace}", **result})

    print(f"\nTensorRT-RTX {tensorrt_rtx.__version__}, batch profile {BATCHES[0]}..{BATCHES[-1]}, "
          f"median of {args.repeats} builds on {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
          f"load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after\n")  # fmt: skip
    print(f"{'model':<20} {'precision':<9} {'targets':<13} {'onnx MB':>8} {'build s':>8} {'min s':>6} {'max s':>6} {'plan MB':>8} {'peak MB':>8} {'plans':>6}")
    for r in rows:
        print(f"{r['model']:<20} {r['precision']:<9} {'+'.join(r['targets']):<13} {r['onnx_mb']:8.2f} {r['median_s']:8.2f} "
              f"{r['min_s']:6.2f} {r['max_s']:6.2f} {r['plan_mb']:8.2f} {r['peak_rss_growth_mb']:8.0f} {len(r['distinct_plans']):6d}")  # fmt: skip
    print(f"\nresnet18 fp32, sm_86+sm_89: build options\n{'option':<22} {'build s':>8} {'plan MB':>8}  distinct plans")
    for k in knobs:
        if "error" in k:
            print(f"{k['option']:<22} build failed: {k['error']}")
        else:
            print(f"{k['option']:<22} {k['median_s']:8.2f} {k['plan_mb']:8.2f}  {', '.join(k['distinct_plans'])}")
    print("\nvariant preparation (s):", json.dumps(variants_made))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tensorrt_rtx": tensorrt_rtx.__version__,
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "batch_profile": list(BATCHES),
        "repeats": args.repeats,
        "builds": rows,
        "options": knobs,
        "variants": variants_made,
    }, indent=2) + "\n")  # fmt: skip
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
