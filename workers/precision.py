"""Precision variants: what the farm makes and how, decided before any model is touched.

The precisions and calibration methods, the int8 Q/DQ layouts (and which one ONNX Runtime's CPU
kernels compute faithfully here), the calibration settings that key a calibration job, and the
records a calibration and a quantization leave (CalibrationRanges, Quantized). The transforms that
write the variants are workers.precision_variants; the CPU sessions that run them, workers.cpu_sessions.

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

import json
from dataclasses import dataclass, field
from typing import Any, Literal



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
    # and that pass is off (workers.cpu_sessions.DISABLED_OPTIMIZERS): with float biases ORT then runs int8 as float kernels.
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




def check_method(precision: str, method: str) -> None:
    allowed = {"int8": INT8_METHODS, "fp8": FP8_METHODS}.get(precision)
    if allowed is None:
        raise QuantizationError(f"precision {precision!r}: quantization makes int8 or fp8 (fp16 is to_fp16)")
    if method not in allowed:
        raise QuantizationError(f"{precision} with calibration method {method!r}: {precision} takes {', '.join(allowed)}")


def _range_json(r: TensorRange) -> dict[str, float]:
    data = {"lowest": r.lowest, "highest": r.highest}
    if r.avg is not None and r.std is not None:
        data.update(avg=r.avg, std=r.std)
    return data
