"""int8 calibration and session settings against fidelity and speed, on a model with trained weights.

The digits CNN (tests/digits_model.py: trained in seconds on scikit-learn's bundled handwritten
digits, real labels) calibrated the way a photo folder is: 16 real rows, as the farm's default
sweep has. Each row of the table is one setting changed from the farm's default (minmax on the 16
rows topped up to 32 with flips and crops, per-channel weights, this CPU's ORT layout with int32
biases, WeightBiasQuantization off), judged on the 500 held-out test digits:

- fidelity through this CPU's ONNX Runtime int8 kernels (top-1 agreement k/n, mean cosine) and through
  fake-quant arithmetic (Q/DQ ops around float kernels, what TensorRT computes);
- p50 latency at batch 64, interleaved rounds (every setting once per round), against fp32.

    .venv/bin/python benchmarks/int8_configs.py [--rounds 5]

Prints the table and writes benchmarks/results/int8_configs.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import platform
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workers import cpu_sessions, fidelity, precision, precision_variants, qdq_sides
from workers.bench import BenchSettings, measure
from workers.calibration import SamplesReader, augment
from workers.device import describe

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.digits_model
WINDOW = BenchSettings(warmup_s=0.2, duration_s=0.5, min_iterations=5, max_duration_s=0.5)  # one fixed window per round
REAL_ROWS = 16  # a photo folder's calibration part
BATCH = 64


@dataclass(frozen=True)
class Config:
    name: str
    method: str = "minmax"
    bins: int | None = None  # entropy histogram bins
    rows: int = REAL_ROWS  # real calibration rows
    augment_to: int = precision.MIN_CALIBRATION_SAMPLES  # topped up with flips and crops to this many (0: none)
    moving_average: bool = False
    per_channel: bool = True
    layout: str = ""  # "" for this CPU's ORT layout
    weight_bias_quantization: bool = False  # ORT's pass on (its default) or off (the farm's)
    model: str = "trained_digits_cnn"
    weights_kept_float: tuple[str, ...] = ()  # nodes whose weights stay float (what the fallback does)


@dataclass
class Row:
    config: str
    method: str
    bins: int | None
    samples: str
    per_channel: bool
    layout: str
    weight_bias_quantization: str
    top1: str  # k/n through ORT's int8 kernels
    cosine: float
    fake_quant_top1: str
    fake_quant_cosine: float
    p50_ms: float = 0.0
    vs_fp32: float = 0.0
    round_p50s: list[float] = field(default_factory=list)


def configs(cpu_layout: str) -> list[Config]:
    weights_case = dict(model="outlier_weights_digits_cnn", weights_kept_float=("/features/features.2/Conv",))
    return [
        Config("farm default"),
        Config("16 rows, no augmentation", augment_to=0),
        Config("64 real rows", rows=64, augment_to=0),
        Config("moving average (16 rows)", augment_to=0, moving_average=True),
        Config("percentile 99.999", method="percentile"),
        Config("entropy, ORT's 128 bins", method="entropy", bins=128),
        Config("entropy, 2048 bins (farm before)", method="entropy", bins=2048),
        Config("per-tensor weights", per_channel=False),
        Config("TensorRT layout (float biases), WBQ off", layout="tensorrt"),
        Config("TensorRT layout (float biases), WBQ on", layout="tensorrt", weight_bias_quantization=True),
        Config("outlier weights, conv kept float, WBQ off", **weights_case),  # type: ignore[arg-type]
        Config("outlier weights, conv kept float, WBQ on", weight_bias_quantization=True, **weights_case),  # type: ignore[arg-type]
        Config("outlier weights, TensorRT layout, WBQ on", layout="tensorrt", weight_bias_quantization=True, **weights_case),  # type: ignore[arg-type]
    ]


def _outputs(session: Any, inputs: np.ndarray) -> np.ndarray:
    return fidelity.run_batched(lambda x: session.run(None, {"input": x})[0], inputs, BATCH)


def _session(model: bytes, wbq: bool) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return cpu_sessions.cpu_inference_session(model, options, () if wbq else cpu_sessions.DISABLED_OPTIMIZERS)


def run(rounds: int) -> tuple[list[Row], dict[str, Any]]:
    from tests import digits_model

    data = digits_model.digits_data()
    cpu = describe().cpu
    cpu_layout = precision.onnxruntime_int8_layout(cpu.arch, cpu.int8_dot_32bit)
    heldout = data.test_inputs
    fp32_models = {name: digits_model.export_onnx(name) for name in ("trained_digits_cnn", "outlier_weights_digits_cnn")}
    fp32_session = _session(fp32_models["trained_digits_cnn"], False)
    references = {name: _outputs(_session(m, False), heldout) for name, m in fp32_models.items()}
    rows, sessions = [], {}
    for config in configs(cpu_layout):
        fp32 = fp32_models[config.model]
        real = data.train_inputs[: config.rows]
        topped = augment(real, config.augment_to) if config.augment_to else None
        calibration_rows = topped.array if topped else real
        ranges = precision_variants.calibrate(fp32, SamplesReader(calibration_rows, "input", 8), config.method,  # type: ignore[arg-type]
                                     entropy_bins=config.bins or precision.ENTROPY_BINS, moving_average=config.moving_average)
        layout = config.layout or cpu_layout
        variant = precision_variants.apply_quantization(fp32, ranges, "int8", layout=layout, per_channel=config.per_channel)
        if config.weights_kept_float:
            variant = qdq_sides.keep_weights_float(variant, config.weights_kept_float)
        session = _session(variant, config.weight_bias_quantization)
        reference = references[config.model]
        kernels = fidelity.compare(reference, _outputs(session, heldout))
        fake = fidelity.compare(reference, _outputs(cpu_sessions.fake_quant_session(variant), heldout))
        n = len(heldout)
        rows.append(Row(config.name, config.method, config.bins,
                        topped.description if topped and topped.description else f"{len(real)} rows",
                        config.per_channel, layout, "on" if config.weight_bias_quantization else "off",
                        f"{round(kernels.top1_agreement * n)}/{n}", kernels.cosine_mean,
                        f"{round(fake.top1_agreement * n)}/{n}", fake.cosine_mean))
        sessions[config.name] = session
    x = np.resize(heldout, (BATCH, *heldout.shape[1:])).astype(np.float32)
    timed = {"fp32": fp32_session} | sessions
    p50s: dict[str, list[float]] = {name: [] for name in timed}
    for _ in range(rounds):
        for name, session in timed.items():
            step = (lambda s: lambda: s.run(None, {"input": x}))(session)
            p50s[name].append(measure(step, BATCH, WINDOW).latency.median)
    base = statistics.median(p50s["fp32"])
    for row in rows:
        row.p50_ms = statistics.median(p50s[row.config])
        row.vs_fp32 = base / row.p50_ms
        row.round_p50s = p50s[row.config]
    return rows, {"fp32_p50_ms": base, "cpu_layout": cpu_layout}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "int8_configs.json")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # quantize_static's advice to pre-process, once per call
    import onnxruntime

    cpu = describe().cpu
    rows, extra = run(args.rounds)
    print(f"cpu: {cpu.model} ({cpu.arch}, {cpu.isa_level}); onnxruntime {onnxruntime.__version__}; digits CNN, "
          f"{REAL_ROWS} real calibration rows, 500 held-out digits, batch {BATCH}; fp32 p50 {extra['fp32_p50_ms']:.3f} ms")
    print(f"{'setting':43} {'samples':>26} {'layout':>10} {'WBQ':>4} {'kernels top-1':>13} {'cosine':>8} "
          f"{'fake-quant top-1':>16} {'cosine':>8} {'p50 ms':>7} {'vs fp32':>7}")
    for r in rows:
        print(f"{r.config:43} {r.samples.split(' (')[0]:>26} {r.layout:>10} {r.weight_bias_quantization:>4} {r.top1:>13} {r.cosine:8.4f} "
              f"{r.fake_quant_top1:>16} {r.fake_quant_cosine:8.4f} {r.p50_ms:7.3f} {r.vs_fp32:6.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": datetime.date.today().isoformat(), "cpu": asdict(cpu), "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
                                    "rounds": args.rounds, "window": asdict(WINDOW), "batch": BATCH, **extra,
                                    "rows": [asdict(r) for r in rows]}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
