"""int8 on ONNX Runtime's CPU kernels, per layout, on the CPU this runs on.

One calibration per model (minmax), written in every int8 layout (workers.precision.INT8_LAYOUTS):
the TensorRT layout (s8 symmetric activations, 8-bit weights), u8s8 and u8s8 with 7-bit weights.
For each: fidelity against fp32 on held-out inputs through ORT's int8 kernels and through fake-quant
arithmetic (Q/DQ ops around float kernels, what TensorRT computes), and p50 latency beside fp32.
Timings are taken in interleaved rounds (fp32, layout A, layout B, ... again), each round a short
window, so drift hits every variant alike; the table gives the median over rounds.

Models: the digits CNN trained in the session (real labels; needs scikit-learn) and torchvision
resnet18 / mobilenet_v3_small with random weights, calibrated on calibration_data's photos and judged
on others (cosine is the meaningful measure for random weights; top-1 agreement barely resolves).

    .venv/bin/python benchmarks/int8_cpu.py [--models digits resnet18 mobilenet_v3_small] [--rounds 5]

Prints a table and writes benchmarks/results/int8_cpu-<isa level>.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from workers import cpu_sessions, fidelity, precision, precision_variants
from workers.bench import BenchSettings, measure
from workers.calibration import SamplesReader, load_images
from workers.device import describe
from workers.models import export
from workers.structs import ModelRef, Preprocess

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.digits_model
WINDOW = BenchSettings(warmup_s=0.2, duration_s=0.6, min_iterations=5, max_duration_s=0.6)  # one fixed window per round


@dataclass
class Row:
    model: str
    variant: str  # fp32 or a layout name
    batch: int
    kernel_top1: float
    kernel_cosine: float
    fake_quant_top1: float | None
    fake_quant_cosine: float | None
    p50_ms: float
    vs_fp32: float  # fp32 p50 / this p50: above 1 is faster
    round_p50s: list[float] = field(default_factory=list)


def _inputs(name: str) -> tuple[bytes, np.ndarray, np.ndarray, list[int]]:
    """(fp32 ONNX, calibration rows, held-out rows, batch sizes to time)."""
    if name == "digits":
        from tests import digits_model

        data = digits_model.digits_data()
        return digits_model.export_onnx(), data.calibration_inputs, data.test_inputs, [1, 64]
    photos = load_images(ROOT / "calibration_data", Preprocess()).array
    return export(ModelRef(name, f"torchvision:{name}", None, (3, 224, 224))).onnx_bytes, photos[:16], photos[16:], [1, 8]


def _outputs(session: Any, inputs: np.ndarray) -> np.ndarray:
    name = session.get_inputs()[0].name
    return fidelity.run_batched(lambda x: session.run(None, {name: x})[0], inputs, 16)


def run_model(name: str, rounds: int) -> list[Row]:
    fp32, calibration_rows, heldout, batches = _inputs(name)
    input_name = onnx.load_from_string(fp32).graph.input[0].name
    ranges = precision_variants.calibrate(fp32, SamplesReader(calibration_rows, input_name, 8), "minmax")
    models = {"fp32": fp32} | {layout: precision_variants.apply_quantization(fp32, ranges, "int8", layout=layout) for layout in precision.INT8_LAYOUTS}
    sessions = {v: cpu_sessions.cpu_session(m, "int8" if v != "fp32" else "fp32") for v, m in models.items()}
    reference = _outputs(sessions["fp32"], heldout)
    judged = {}
    for variant, model in models.items():
        kernels = fidelity.compare(reference, _outputs(sessions[variant], heldout))
        fake = fidelity.compare(reference, _outputs(cpu_sessions.fake_quant_session(model), heldout)) if variant != "fp32" else None
        judged[variant] = (kernels, fake)
    rows = []
    for batch in batches:
        x = np.resize(heldout, (batch, *heldout.shape[1:])).astype(np.float32)
        p50s: dict[str, list[float]] = {v: [] for v in models}
        for _ in range(rounds):
            for variant, session in sessions.items():
                step = (lambda s: lambda: s.run(None, {input_name: x}))(session)
                p50s[variant].append(measure(step, batch, WINDOW).latency.median)
        base = statistics.median(p50s["fp32"])
        for variant in models:
            kernels, fake = judged[variant]
            p50 = statistics.median(p50s[variant])
            rows.append(Row(name, variant, batch, kernels.top1_agreement, kernels.cosine_mean,
                            fake.top1_agreement if fake else None, fake.cosine_mean if fake else None, p50, base / p50, p50s[variant]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["digits", "resnet18", "mobilenet_v3_small"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # quantize_static's advice to pre-process, once per call
    import onnxruntime

    cpu = describe().cpu
    print(f"cpu: {cpu.model} ({cpu.arch}, {cpu.isa_level}); int8 dot products accumulate in 32 bits: {cpu.int8_dot_32bit}; "
          f"onnxruntime {onnxruntime.__version__}; planner's ORT layout here: {precision.onnxruntime_int8_layout(cpu.arch, cpu.int8_dot_32bit)}")
    rows: list[Row] = []
    for name in args.models:
        rows += run_model(name, args.rounds)
    print(f"{'model':20} {'variant':10} {'batch':>5} {'kernels top-1':>13} {'cosine':>8} {'fake-quant top-1':>16} {'cosine':>8} {'p50 ms':>9} {'vs fp32':>8}")
    for r in rows:
        fake = f"{r.fake_quant_top1:16.3f} {r.fake_quant_cosine:8.4f}" if r.fake_quant_top1 is not None else f"{'-':>16} {'-':>8}"
        print(f"{r.model:20} {r.variant:10} {r.batch:5d} {r.kernel_top1:13.3f} {r.kernel_cosine:8.4f} {fake} {r.p50_ms:9.2f} {r.vs_fp32:7.2f}x")
    out = args.out or ROOT / "benchmarks" / "results" / f"int8_cpu-{cpu.isa_level}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cpu": asdict(cpu), "int8_dot_32bit": cpu.int8_dot_32bit, "python": platform.python_version(),
                               "onnxruntime": onnxruntime.__version__, "rounds": args.rounds, "window": asdict(WINDOW),
                               "rows": [asdict(r) for r in rows]}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
