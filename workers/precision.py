"""Precision variants as ONNX-to-ONNX transforms: fp16 conversion, int8 / fp8 explicit Q/DQ.

Calibration and quantization are two halves on purpose. `calibrate` runs the model over the
calibration data once and returns the activation ranges (`CalibrationRanges`, serialisable to
JSON bytes so the driver can store them as an artifact); `apply_quantization` writes the Q/DQ
graph from stored ranges with no data at all, so the precision fallback and a cache hit re-quantize
(with other `nodes_to_exclude`) without running the calibrator again. `quantize` composes the two.

Settings are the ones TensorRT parses (docs/precision.md says why): QDQ format, symmetric int8
activations and per-channel symmetric weights with a float weight and its own Q/DQ pair, bias left
in float, a dedicated Q/DQ pair per consumer. fp8 is E4M3FN for both. Its activation scales are
amax / 448 (the largest magnitude of the calibrated range lands on fp8's largest value, TensorRT's
and ModelOpt's convention), so one minmax / entropy / percentile calibration serves int8 and fp8
alike. "distribution" gives ONNX Runtime's own fp8 rule instead (scale from each tensor's standard
deviation, mean ignored), which measured worse and saturates non-centred tensors: docs/precision.md.
int8 refuses "distribution" (its range is the minmax range, computed slower).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx


METHODS: tuple[str, ...] = ("minmax", "entropy", "percentile", "distribution")
INT8_METHODS: tuple[str, ...] = ("minmax", "entropy", "percentile")
FP8_METHODS: tuple[str, ...] = ("minmax", "entropy", "percentile", "distribution")
RANGES_FORMAT = 1  # bump when the JSON layout of CalibrationRanges changes
# ONNX Runtime's own entropy default. 2048 bins (TensorRT's histogram size) made the KL search clip
# hard: on an ImageNet classifier it cut the pooled features' range from 4.91 to 2.19 and mean cosine
# fell to 0.855, against 0.987 at 128 (issue 19). With 128 bins folded into 128 quantized bins the
# search has one candidate, the full range, so entropy gives minmax's ranges: docs/precision.md.
ENTROPY_BINS = 128
# Calibration sets are small (16-24 photos): fewer rows than this are topped up with horizontal flips
# and small crops of themselves (workers.calibration.augment), deterministically.
MIN_CALIBRATION_SAMPLES = 32
# ONNX Runtime graph optimisations the farm turns off wherever it opens a model on the CPU provider.
# WeightBiasQuantization (at ORT_ENABLE_ALL) gives per-tensor int8 weights to a float Conv/Gemm that
# sits between DequantizeLinear and QuantizeLinear: it undoes per-channel weights kept in float by the
# fallback (cosine 0.895 on int8 kernels against 0.990 simulated, issue 19).
DISABLED_OPTIMIZERS: tuple[str, ...] = ("WeightBiasQuantization",)


def calibration_settings(method: str) -> dict[str, Any]:
    """What, besides the method and the data, decides a calibration's ranges: part of its job key."""
    return {"entropy_bins": ENTROPY_BINS if method == "entropy" else None, "moving_average": False,
            "min_samples": MIN_CALIBRATION_SAMPLES, "augmentation": "hflip+crop-v1"}

# The settings HF Optimum uses for its TensorRT config (docs/precision.md).
QDQ_EXTRA_OPTIONS: dict[str, Any] = {
    "ActivationSymmetric": True,
    "WeightSymmetric": True,
    "AddQDQPairToWeight": True,
    "QuantizeBias": False,
    "DedicatedQDQPair": True,
}


@dataclass(frozen=True)
class Int8Layout:
    """How an int8 Q/DQ graph is written from one set of ranges: the activations' integer type and
    whether weights keep all 8 bits. The ranges are the same for every layout; no layout calibrates."""

    name: str
    activations: Literal["s8", "u8"]  # s8: symmetric, zero point 0; u8: asymmetric
    reduce_range: bool  # 7-bit weights
    label: str  # what engine labels add ("" for the default)
    description: str
    # int32 biases (DequantizeLinear of input scale x weight scale). TensorRT wants float biases; ORT's
    # int8 Conv/Gemm fusions need int32 ones, which its WeightBiasQuantization pass would otherwise make,
    # and that pass is off (DISABLED_OPTIMIZERS): with float biases ORT then runs int8 as float kernels.
    quantize_bias: bool = False


INT8_LAYOUTS: dict[str, Int8Layout] = {
    layout.name: layout
    for layout in (
        Int8Layout("tensorrt", "s8", False, "", "s8 symmetric activations, 8-bit per-channel weights: the form TensorRT parses"),
        Int8Layout("u8s8", "u8", False, "u8s8",
                   "u8 asymmetric activations, 8-bit per-channel weights: ONNX Runtime's x86 kernels with VNNI or AMX", True),
        Int8Layout("u8s8_7bit", "u8", True, "u8s8 7-bit",
                   "u8 asymmetric activations, 7-bit per-channel weights: ONNX Runtime's x86 kernels without VNNI, "
                   "whose 16-bit sums of u8 x s8 pairs saturate at full weight range", True),
        Int8Layout("s8s8", "s8", False, "s8s8",
                   "s8 symmetric activations, 8-bit per-channel weights, int32 biases: ONNX Runtime's kernels off x86", True),
    )
}
DEFAULT_LAYOUT = "tensorrt"


def onnxruntime_int8_layout(arch: str, int8_dot_32bit: bool) -> str:
    """The int8 layout ONNX Runtime's CPU kernels compute faithfully, and fastest, on this CPU.

    Measured (docs/precision.md, benchmarks/int8_cpu.py): on x86 the TensorRT layout runs ORT's
    S8S8 path, which is no faster than fp32 and, without VNNI, saturates (resnet18 top-1 agreement
    0.19); u8 activations take ORT's U8S8 kernels, and 7-bit weights keep their sums in range.
    Elsewhere (Arm's dot-product instructions accumulate in 32 bits) the TensorRT layout is kept, but
    with int32 biases.
    """
    if arch.lower() not in ("x86_64", "amd64", "i386", "i686"):
        return "s8s8"  # the TensorRT layout with int32 biases, which ORT's int8 fusions need (Int8Layout.quantize_bias)
    return "u8s8" if int8_dot_32bit else "u8s8_7bit"


class QuantizationError(ValueError):
    """The requested precision, method or ranges do not fit together, or calibration failed."""


@dataclass(frozen=True)
class TensorRange:
    """One activation's calibration result: the range int8 uses, and the spread fp8 uses."""

    lowest: float
    highest: float
    avg: float | None = None  # only the distribution method computes these
    std: float | None = None


@dataclass(frozen=True)
class CalibrationRanges:
    """The activation ranges of one calibration run: what the driver stores and re-quantizes from.

    Key it by the fp32 ONNX's sha256, method, percentile (percentile only), the calibration samples
    (their digest and preprocessing), sample count, RANGES_FORMAT and the onnxruntime version.
    The precision is not part of it: the same ranges make int8 and fp8.
    """

    method: str
    samples: int
    seconds: float
    tensors: dict[str, TensorRange]
    percentile: float | None = None  # set for the percentile method only
    augmentation: str | None = None  # how rows were added to a small calibration set (None: none were)

    def as_tuples(self) -> dict[str, tuple[float, float]]:
        return {name: (r.lowest, r.highest) for name, r in self.tensors.items()}

    def to_bytes(self) -> bytes:
        data = {
            "format": RANGES_FORMAT,
            "method": self.method,
            "percentile": self.percentile,
            "samples": self.samples,
            **({"augmentation": self.augmentation} if self.augmentation else {}),
            "seconds": self.seconds,
            "tensors": {name: _range_json(r) for name, r in sorted(self.tensors.items())},
        }
        return json.dumps(data, sort_keys=True, indent=1).encode()

    @staticmethod
    def from_bytes(data: bytes) -> CalibrationRanges:
        try:
            raw = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise QuantizationError(f"calibration ranges are not JSON ({exc})") from exc
        if raw.get("format") != RANGES_FORMAT:
            raise QuantizationError(f"calibration ranges format {raw.get('format')!r}, this code reads {RANGES_FORMAT}")
        tensors = {name: TensorRange(**values) for name, values in raw["tensors"].items()}
        return CalibrationRanges(raw["method"], raw["samples"], raw["seconds"], tensors, raw.get("percentile"), raw.get("augmentation"))


@dataclass(frozen=True)
class Quantized:
    onnx_bytes: bytes
    ranges: dict[str, tuple[float, float]]  # activation name -> (lowest, highest)
    seconds: float  # calibration and quantization together
    method: str
    samples: int
    precision: str = "int8"
    calibration: CalibrationRanges | None = field(default=None, repr=False)  # store this to re-quantize later


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

    _check_method(precision, ranges.method)
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
    _check_method(precision, method)
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


def runs_on_cpu(precision: str) -> bool:
    """Whether ONNX Runtime's CPU provider here runs a variant of `precision` with faithful numbers.

    fp8 runs only with graph optimisation at "basic" or lower (see `cpu_graph_optimization`); it is
    still reported True because fidelity can be measured that way. Nothing here runs fp8 at fp8 speed:
    ORT emulates it with Quantize/DequantizeLinear around float kernels, so fp8 CPU timings mean little.
    """
    return precision in ("fp32", "fp16", "int8", "fp8")


def cpu_graph_optimization(precision: str) -> str:
    """The highest ONNX Runtime CPU graph optimisation level that keeps `precision`'s outputs right.

    Seen here (onnxruntime 1.32): at "extended" and above ORT fuses Relu into the following fp8
    QuantizeLinear as it would for an asymmetric int8 one, dropping the Relu; negative values then
    survive and a ResNet-18 fp8 variant's top-1 agreement with fp32 falls to zero. "basic" keeps them.
    """
    return "basic" if precision == "fp8" else "all"


def fake_quant_session(onnx_bytes: bytes, *, threads: int = 0) -> Any:
    """A session that computes a Q/DQ graph exactly as written: every Quantize/DequantizeLinear runs
    as an op around float kernels, with no int8 kernel fused in (graph optimisation off).

    This is the arithmetic TensorRT and any CPU whose int8 dot products accumulate in 32 bits carry
    out, on every CPU alike: what the precision fallback judges a variant by, so that a kernel that
    saturates on one CPU never makes a variant look bad everywhere.
    """
    return cpu_session(onnx_bytes, "fp32", threads=threads, level="disable")


def cpu_session(onnx_bytes: bytes, precision: str, *, threads: int = 0, level: str | None = None) -> Any:
    """An ONNX Runtime CPU session at the safe optimisation level for `precision` (or at `level`)."""
    import onnxruntime as ort

    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    options = ort.SessionOptions()
    options.graph_optimization_level = levels[level or cpu_graph_optimization(precision)]
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return cpu_inference_session(onnx_bytes, options)


def cpu_inference_session(onnx_bytes: bytes, options: Any, disabled_optimizers: Iterable[str] = DISABLED_OPTIMIZERS) -> Any:
    """An ONNX Runtime session on the CPU provider with DISABLED_OPTIMIZERS off: every place the farm
    opens a model on ORT's CPU provider comes through here."""
    import onnxruntime as ort

    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"], disabled_optimizers=list(disabled_optimizers))


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


def _check_method(precision: str, method: str) -> None:
    allowed = {"int8": INT8_METHODS, "fp8": FP8_METHODS}.get(precision)
    if allowed is None:
        raise QuantizationError(f"precision {precision!r}: quantization makes int8 or fp8 (fp16 is to_fp16)")
    if method not in allowed:
        raise QuantizationError(f"{precision} with calibration method {method!r}: {precision} takes {', '.join(allowed)}")


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


def _range_json(r: TensorRange) -> dict[str, float]:
    data = {"lowest": r.lowest, "highest": r.highest}
    if r.avg is not None and r.std is not None:
        data.update(avg=r.avg, std=r.std)
    return data


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
