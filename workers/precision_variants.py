"""Precision variants as ONNX-to-ONNX transforms: fp16 conversion, int8 / fp8 explicit Q/DQ.

Calibration and quantization are two halves on purpose. `calibrate` runs the model over the
calibration data once and returns the activation ranges (`CalibrationRanges`, serialisable to
JSON bytes so the driver can store them as an artifact); `apply_quantization` writes the Q/DQ
graph from stored ranges with no data at all, so the precision fallback and a cache hit re-quantize
(with other `nodes_to_exclude`) without running the calibrator again. `quantize` composes the two.
What they write (methods, layouts, the Q/DQ settings TensorRT parses) is decided in workers.precision.
"""

from __future__ import annotations

import contextlib
import io
import math
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from workers.precision import (
    DEFAULT_LAYOUT,
    ENTROPY_BINS,
    INT8_LAYOUTS,
    METHODS,
    QDQ_EXTRA_OPTIONS,
    CalibrationRanges,
    QuantizationError,
    Quantized,
    TensorRange,
    check_method,
)


def to_fp16(
    onnx_bytes: bytes,
    *,
    keep_io_types: bool = True,
    op_block_list: Iterable[str] = (),
    node_block_list: Iterable[str] = (),
) -> bytes:
    """Convert every float tensor and op to fp16, except the blocked op types and nodes.

    `keep_io_types=True` keeps fp32 inputs and outputs (with Casts at the edges), so the fp16 variant
    takes the same feeds and gives comparable outputs.
    """
    import warnings

    from onnxconverter_common import float16

    model = onnx.load_from_string(onnx_bytes)
    with warnings.catch_warnings():
        # One warning per weight below fp16's smallest normal: thousands of lines, and the clamp
        # to 1e-7 is the converter's documented behaviour.
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(
            model,
            keep_io_types=keep_io_types,
            # Added to the converter's default list (ops without fp16 kernels, NMS, RoiAlign, Resize...), not instead of it.
            op_block_list=sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(op_block_list)),
            node_block_list=list(node_block_list) or None,
        )
    return converted.SerializeToString()


def calibrate(onnx_bytes: bytes, reader: Any, method: str = "minmax", percentile: float = 99.999, *,
              entropy_bins: int = ENTROPY_BINS, moving_average: bool = False, augmentation: str | None = None) -> CalibrationRanges:
    """Run the model over every batch `reader` yields once and compute activation ranges.

    `reader` is an onnxruntime `CalibrationDataReader`; it is rewound first when it can be.
    `entropy_bins` and `moving_average` exist to measure other settings (benchmarks/int8_configs.py):
    a moving average of per-batch ranges over a small set drops the rare large activations that a
    plain minimum and maximum keep. `augmentation` is only recorded.
    """
    from onnxruntime.quantization.calibrate import create_calibrator

    if method not in METHODS:
        raise QuantizationError(f"calibration method {method!r}: expected one of {', '.join(METHODS)}")
    if method == "percentile" and not 0 < percentile <= 100:
        raise QuantizationError(f"percentile {percentile}: expected a value in (0, 100]")
    if hasattr(reader, "rewind"):
        reader.rewind()
    counting = _CountingReader(reader)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="farm-calib-") as tmp:
        model_path = Path(tmp) / "model.onnx"
        model_path.write_bytes(onnx_bytes)
        extra: dict[str, Any] = ({"percentile": percentile} if method == "percentile" else {"num_bins": entropy_bins} if method == "entropy"
                                 else {"moving_average": moving_average})
        # ORT's calibrators print progress lines, and the distribution method warns about the
        # negative variances that _tensor_range repairs; neither says anything a caller needs.
        with contextlib.redirect_stdout(io.StringIO()), np.errstate(invalid="ignore"):
            calibrator = create_calibrator(
                model_path,
                _quantizable_op_types(),
                augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                calibrate_method=_ort_method(method),
                extra_options=extra,
            )
            try:
                calibrator.collect_data(counting)
                tensors_data = calibrator.compute_data()
            except ValueError as exc:
                if counting.samples == 0:
                    raise QuantizationError("calibration data reader yielded no samples") from exc
                raise QuantizationError(f"{method} calibration failed: {exc}{_hint(exc)}") from exc
    tensors = {name: _tensor_range(data) for name, data in tensors_data.items()}
    return CalibrationRanges(
        method=method,
        samples=counting.samples,
        seconds=time.perf_counter() - started,
        tensors=tensors,
        percentile=percentile if method == "percentile" else None,
        augmentation=augmentation,
    )


def apply_quantization(
    onnx_bytes: bytes,
    ranges: CalibrationRanges,
    precision: str = "int8",
    nodes_to_exclude: Iterable[str] = (),
    layout: str = DEFAULT_LAYOUT,
    *,
    per_channel: bool = True,
) -> bytes:
    """Write the Q/DQ model for `precision` from stored ranges; the nodes in `nodes_to_exclude` stay float.

    `layout` (INT8_LAYOUTS) says how int8 is written; fp8 has one layout, the TensorRT one. Weights
    are per output channel; `per_channel=False` (one scale per weight tensor) is for measuring only.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    check_method(precision, ranges.method)
    if layout not in INT8_LAYOUTS:
        raise QuantizationError(f"int8 layout {layout!r}: expected one of {', '.join(INT8_LAYOUTS)}")
    if precision == "fp8" and layout != DEFAULT_LAYOUT:
        raise QuantizationError(f"fp8 has one layout ({DEFAULT_LAYOUT}), not {layout!r}")
    form = INT8_LAYOUTS[layout]
    quant_type = _quant_type(precision)
    activation_type = QuantType.QUInt8 if form.activations == "u8" else quant_type
    extra_options = dict(QDQ_EXTRA_OPTIONS, ActivationSymmetric=form.activations == "s8", QuantizeBias=form.quantize_bias)
    with tempfile.TemporaryDirectory(prefix="farm-quant-") as tmp:
        model_path = Path(tmp) / "model.onnx"
        cache_path = Path(tmp) / "ranges.json"
        output_path = Path(tmp) / "quantized.onnx"
        model_path.write_bytes(onnx_bytes)
        save_tensors_data(_tensors_data(ranges, precision), cache_path)
        # With an existing cache file, quantize_static skips calibration and reads the ranges from it.
        quantize_static(
            model_path,
            output_path,
            calibration_data_reader=None,
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=form.reduce_range,
            activation_type=activation_type,
            weight_type=quant_type,
            nodes_to_exclude=sorted(set(nodes_to_exclude)),
            calibrate_method=_ort_method("distribution" if precision == "fp8" else ranges.method),
            extra_options=extra_options,
            calibration_cache_path=cache_path,
        )
        return _repair_zero_scales(output_path.read_bytes())


def quantize(
    onnx_bytes: bytes,
    reader: Any,
    *,
    precision: str = "int8",
    method: str = "minmax",
    percentile: float = 99.999,
    nodes_to_exclude: Iterable[str] = (),
    layout: str = DEFAULT_LAYOUT,
) -> Quantized:
    """Calibrate once with `method`, then write the `precision` Q/DQ model in `layout`."""
    check_method(precision, method)
    started = time.perf_counter()
    ranges = calibrate(onnx_bytes, reader, method, percentile)
    data = apply_quantization(onnx_bytes, ranges, precision, nodes_to_exclude, layout)
    return Quantized(
        onnx_bytes=data,
        ranges=ranges.as_tuples(),
        seconds=time.perf_counter() - started,
        method=method,
        samples=ranges.samples,
        precision=precision,
        calibration=ranges,
    )


class _CountingReader:
    """Passes batches through and counts samples (the first input's batch axis)."""

    def __init__(self, reader: Any) -> None:
        self._reader = reader
        self.samples = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch: dict[str, np.ndarray] | None = self._reader.get_next()
        if batch:
            self.samples += int(np.asarray(next(iter(batch.values()))).shape[0])
        return batch

    def __iter__(self) -> _CountingReader:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.get_next()
        if batch is None:
            raise StopIteration
        return batch


def _quant_type(precision: str) -> Any:
    from onnxruntime.quantization import QuantType

    return QuantType.QFLOAT8E4M3FN if precision == "fp8" else QuantType.QInt8


def _ort_method(method: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    return {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
        "distribution": CalibrationMethod.Distribution,
    }[method]


def _quantizable_op_types() -> list[str]:
    # The same op types quantize_static calibrates when it runs the calibrator itself.
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QLinearOpsRegistry) | set(QDQRegistry))


def _tensor_range(data: Any) -> TensorRange:
    lowest, highest = (_float(v) for v in data.range_value)
    if not (hasattr(data, "avg") and hasattr(data, "std")):
        return TensorRange(lowest, highest)
    avg, std = data.avg_std
    spread = float(np.asarray(std, dtype=np.float32).reshape(-1)[0])
    if not (math.isfinite(spread) and spread > 0):
        spread = _fp8_spread_for_range(lowest, highest)
    return TensorRange(lowest, highest, avg=_float(avg), std=spread)


def _fp8_spread_for_range(lowest: float, highest: float) -> float:
    """The spread that makes ORT's fp8 scale (std / std of all E4M3FN values) equal amax / 448.

    Also the repair for the distribution method's degenerate spreads: ORT computes the variance as
    E[x^2] - E[x]^2 in float32, which goes negative for a near-constant tensor (a saturated gate,
    seen in mobilenet_v3_small) and gives NaN, and a constant tensor's spread is 0.
    """
    import ml_dtypes

    codes = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)
    fp8_std = float(np.std(codes[np.isfinite(codes)]))
    return float(np.float32(max(abs(lowest), abs(highest)) * fp8_std / 448.0))


def _float(value: Any) -> float:
    # Calibrators return float32 scalars; a Python float holds every float32 exactly, so the JSON
    # round trip gives back the very same ranges (and byte-identical Q/DQ models).
    array = np.asarray(value, dtype=np.float32).reshape(-1)  # MinMax gives shape (1,), the others scalars
    if array.size != 1:
        raise QuantizationError(f"calibration produced {array.size} values for one tensor range; per-tensor expected")
    result = float(array[0])
    if not math.isfinite(result):
        raise QuantizationError(f"calibration produced a non-finite range value {result}")
    return result


def _tensors_data(ranges: CalibrationRanges, precision: str) -> Any:
    """ORT's TensorsData for `precision`; labelled Distribution for fp8, the one method ORT accepts for float8."""
    from onnxruntime.quantization.calibrate import TensorData, TensorsData

    def one(r: TensorRange) -> Any:
        values = {"lowest": r.lowest, "highest": r.highest}
        if precision == "fp8":
            # ORT's float8 scale is std / std(all E4M3FN values); this std makes it amax / 448.
            spread = r.std if ranges.method == "distribution" and r.std is not None else _fp8_spread_for_range(r.lowest, r.highest)
            values.update(avg=r.avg or 0.0, std=spread)
        return TensorData(**{k: np.asarray(v, dtype=np.float32) for k, v in values.items()})

    method = "distribution" if precision == "fp8" else ranges.method
    return TensorsData(_ort_method(method), {name: one(r) for name, r in ranges.tensors.items()})


def _repair_zero_scales(onnx_bytes: bytes) -> bytes:
    """Give zero Q/DQ scales the value 1, leaving the model's bytes untouched when there are none.

    ORT derives a float8 scale from a tensor's standard deviation, so an all-zero weight channel (a
    pruned filter) or a constant activation gets scale 0, and Quantize/DequantizeLinear compute
    0 / 0 = NaN for every output (seen here with onnxruntime 1.32). TensorRT rejects non-positive
    scales too. Any positive scale is exact for a tensor that is all zeros.
    """
    from onnx import numpy_helper

    model = onnx.load_from_string(onnx_bytes)
    scale_names = {n.input[1] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 1}
    changed = False
    for index, init in enumerate(model.graph.initializer):
        if init.name not in scale_names:
            continue
        scale = numpy_helper.to_array(init)
        if np.any(scale == 0):
            fixed = np.where(scale == 0, np.ones_like(scale), scale)
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(fixed, init.name))
            changed = True
    return model.SerializeToString() if changed else onnx_bytes


def _hint(exc: Exception) -> str:
    if "bins" in str(exc):
        # ORT builds a fixed-count histogram over each tensor's [min, max]; a tensor whose values
        # span less than float32 resolution (vanishing activations of random-init weights) cannot be binned.
        return " (a tensor's values span less than float32 resolution, as with random-init weights whose activations vanish; use minmax)"
    return ""
