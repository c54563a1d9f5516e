"""Calibration cost and what each precision variant buys on ONNX Runtime CPU.

For resnet18 and mobilenet_v3_small (random weights, exported by workers.models.export):
- calibration time per method (minmax / entropy / percentile for int8, distribution for fp8) and
  per calibration sample count (8, 16, 32 photos of calibration_data), with the variant's fidelity
  against fp32 on the same 5 held-out photos every time;
- fp32, fp16, int8 and fp8 variants: p50 latency at batch 1 and 8 (workers.bench.measure, short
  settings, best p50 of 3 runs) and fidelity (top-1 agreement, mean cosine);
- quant_pre_process: its cost and its effect on the int8 variant.

Prints tables and writes benchmarks/results/calibration.json.
    .venv/bin/python benchmarks/calibration.py [--models resnet18 ...] [--counts 8 16 32] [--methods minmax ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from workers import cpu_sessions, fidelity, precision, precision_variants
from workers.bench import BenchSettings, measure
from workers.calibration import Samples, SamplesReader, load_images, split
from workers.models import export
from workers.structs import ModelRef, Preprocess

ROOT = Path(__file__).resolve().parent.parent
HELD_OUT = 5
METHODS = ("minmax", "entropy", "percentile", "distribution")
SETTINGS = BenchSettings(warmup_s=0.3, duration_s=1.0, min_iterations=5, max_duration_s=1.0)
REPEATS = 3


@dataclass
class CalibrationRow:
    model: str
    method: str
    samples: int
    calibrate_s: float | None = None
    quantize_s: float | None = None  # one apply_quantization from the stored ranges
    int8_top1: float | None = None  # None: int8 does not take this method
    int8_cosine: float | None = None
    fp8_top1: float | None = None
    fp8_cosine: float | None = None
    error: str = ""


@dataclass
class VariantRow:
    model: str
    variant: str
    size_mb: float
    p50_ms_b1: float
    p50_ms_b8: float
    cv_b8: float
    top1_agreement: float
    cosine_mean: float
    ort_level: str


@dataclass
class PreProcessRow:
    model: str
    pre_process_s: float
    nodes_before: int
    nodes_after: int
    cosine_without: float
    cosine_with: float
    quantize_s_without: float
    quantize_s_with: float


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v3_small"])
    parser.add_argument("--counts", nargs="+", type=int, default=[8, 16, 32])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "calibration.json")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # quantize_static's advice to pre-process, once per call

    photos = load_images(ROOT / "calibration_data", Preprocess())
    held_out = split(photos, max(args.counts), HELD_OUT)[1]
    calibration_rows: list[CalibrationRow] = []
    variant_rows: list[VariantRow] = []
    pre_rows: list[PreProcessRow] = []
    for arch in args.models:
        model = export(ModelRef(arch, f"torchvision:{arch}", None, (3, 224, 224))).onnx_bytes
        reference = _outputs(model, "fp32", held_out.array)
        rows, largest = _calibration(arch, model, photos, args.counts, args.methods, held_out, reference)
        calibration_rows += rows
        variant_rows += _variants(arch, model, largest, held_out, reference)
        pre_rows.append(_pre_process(arch, model, photos, held_out, reference))
        _print(calibration_rows, variant_rows, pre_rows)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
        "onnxruntime": _version("onnxruntime"),
        "held_out_images": held_out.files,
        "settings": {**asdict(SETTINGS), "repeats": REPEATS},
        "calibration": [asdict(r) for r in calibration_rows],
        "variants": [asdict(r) for r in variant_rows],
        "pre_process": [asdict(r) for r in pre_rows],
    }, indent=1))
    print(f"wrote {args.out}")


def _calibration(arch: str, model: bytes, photos: Samples, counts: list[int], methods: list[str], held_out: Samples,
                 reference: np.ndarray) -> tuple[list[CalibrationRow], dict[str, bytes]]:
    """One row per (method, sample count); the variants from the largest count are returned for timing."""
    rows: list[CalibrationRow] = []
    largest: dict[str, bytes] = {}
    for method in methods:
        for count in counts:
            row = CalibrationRow(arch, method, count)
            rows.append(row)
            reader = SamplesReader(split(photos, count, HELD_OUT)[0], "input", batch_size=8)
            try:
                ranges = precision_variants.calibrate(model, reader, method)  # type: ignore[arg-type]
            except precision.QuantizationError as exc:
                row.error = str(exc)
                continue
            row.calibrate_s = ranges.seconds
            for variant_precision in ("int8", "fp8"):
                if method not in (precision.INT8_METHODS if variant_precision == "int8" else precision.FP8_METHODS):
                    continue
                started = time.perf_counter()
                variant = precision_variants.apply_quantization(model, ranges, variant_precision)  # type: ignore[arg-type]
                row.quantize_s = time.perf_counter() - started
                result = fidelity.compare(reference, _outputs(variant, variant_precision, held_out.array))
                setattr(row, f"{variant_precision}_top1", result.top1_agreement)
                setattr(row, f"{variant_precision}_cosine", result.cosine_mean)
                if count == max(counts) and (variant_precision == "int8" or method in ("minmax", "distribution")):
                    largest[f"{variant_precision} {method}"] = variant
    return rows, largest


def _variants(arch: str, model: bytes, quantized: dict[str, bytes], held_out: Samples, reference: np.ndarray) -> list[VariantRow]:
    variants = {"fp32": model, "fp16": precision_variants.to_fp16(model), **quantized}
    rows = []
    for name, data in variants.items():
        variant_precision = name.split()[0]
        result = fidelity.compare(reference, _outputs(data, variant_precision, held_out.array))
        b1, b8 = (_latency(data, variant_precision, held_out.array, batch) for batch in (1, 8))
        rows.append(VariantRow(arch, name, len(data) / 1e6, b1.latency.median, b8.latency.median, b8.latency.cv,
                               result.top1_agreement, result.cosine_mean, cpu_sessions.cpu_graph_optimization(variant_precision)))
    return rows


def _pre_process(arch: str, model: bytes, photos: Samples, held_out: Samples, reference: np.ndarray) -> PreProcessRow:
    from onnxruntime.quantization import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "model.onnx").write_bytes(model)
        started = time.perf_counter()
        quant_pre_process(str(Path(tmp, "model.onnx")), str(Path(tmp, "pre.onnx")))
        pre_s = time.perf_counter() - started
        pre = Path(tmp, "pre.onnx").read_bytes()
    cosines, seconds = [], []
    for data in (model, pre):
        started = time.perf_counter()
        quantized = precision_variants.quantize(data, SamplesReader(split(photos, 16, HELD_OUT)[0], "input", 8), method="minmax")
        seconds.append(time.perf_counter() - started)
        cosines.append(fidelity.compare(reference, _outputs(quantized.onnx_bytes, "int8", held_out.array)).cosine_mean)
    nodes = [len(onnx.load_from_string(d).graph.node) for d in (model, pre)]
    return PreProcessRow(arch, pre_s, nodes[0], nodes[1], cosines[0], cosines[1], seconds[0], seconds[1])


def _outputs(model: bytes, variant_precision: str, inputs: np.ndarray) -> np.ndarray:
    session = cpu_sessions.cpu_session(model, variant_precision)
    return fidelity.run_batched(lambda x: session.run(None, {"input": x})[0], inputs, 8)


def _latency(model: bytes, variant_precision: str, inputs: np.ndarray, batch: int) -> Any:
    """The run with the lowest p50 of REPEATS: other jobs on a shared machine only ever add time."""
    session = cpu_sessions.cpu_session(model, variant_precision)
    feeds = {"input": np.resize(inputs, (batch, *inputs.shape[1:])).astype(np.float32)}
    runs = [measure(lambda: session.run(None, feeds), batch, SETTINGS) for _ in range(REPEATS)]
    return min(runs, key=lambda t: t.latency.median)


def _print(calibration_rows: list[CalibrationRow], variant_rows: list[VariantRow], pre_rows: list[PreProcessRow]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    table = Table(title="calibration (fidelity vs fp32 on 5 held-out photos)")
    for column in ("model", "method", "samples", "calibrate s", "quantize s", "int8 top-1", "int8 cosine", "fp8 top-1", "fp8 cosine"):
        table.add_column(column, justify="left" if column in ("model", "method") else "right")

    def cell(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    for r in calibration_rows:
        table.add_row(r.model, r.method, str(r.samples), "failed (below)" if r.error else cell(r.calibrate_s, 2), cell(r.quantize_s, 2),
                      cell(r.int8_top1, 2), cell(r.int8_cosine, 5), cell(r.fp8_top1, 2), cell(r.fp8_cosine, 5))
    console.print(table)
    for failure in sorted({(r.model, r.method, r.error) for r in calibration_rows if r.error}):
        console.print(f"{failure[0]} {failure[1]}: {failure[2]}")
    table = Table(title="variants on ONNX Runtime CPU (p50 ms, best of 3 runs; int8/fp8 calibrated on 32 photos)")
    for column in ("model", "variant", "MB", "p50 b1", "p50 b8", "cv b8", "top-1 agr", "cosine", "ORT level"):
        table.add_column(column, justify="left" if column in ("model", "variant", "ORT level") else "right")
    for v in variant_rows:
        table.add_row(v.model, v.variant, f"{v.size_mb:.1f}", f"{v.p50_ms_b1:.2f}", f"{v.p50_ms_b8:.2f}", f"{v.cv_b8:.3f}",
                      f"{v.top1_agreement:.2f}", f"{v.cosine_mean:.5f}", v.ort_level)
    console.print(table)
    table = Table(title="quant_pre_process (int8 minmax, 16 photos)")
    for column in ("model", "pre-process s", "nodes", "cosine without", "cosine with", "quantize s without", "quantize s with"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for p in pre_rows:
        table.add_row(p.model, f"{p.pre_process_s:.2f}", f"{p.nodes_before} -> {p.nodes_after}", f"{p.cosine_without:.5f}",
                      f"{p.cosine_with:.5f}", f"{p.quantize_s_without:.2f}", f"{p.quantize_s_with:.2f}")
    console.print(table)


def _version(package: str) -> str:
    from importlib import metadata

    return metadata.version(package)


if __name__ == "__main__":
    main()
