"""ONNX Runtime sessions on the CPU provider, opened the one way that keeps a variant's numbers right:
the graph optimisation level its precision allows, and the optimisers that would change it turned off."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# ONNX Runtime graph optimisations the farm turns off wherever it opens a model on the CPU provider.
# WeightBiasQuantization (at ORT_ENABLE_ALL) gives per-tensor int8 weights to a float Conv/Gemm that
# sits between DequantizeLinear and QuantizeLinear: it undoes per-channel weights kept in float by the
# fallback (cosine 0.895 on int8 kernels against 0.990 simulated, issue 19).
DISABLED_OPTIMIZERS: tuple[str, ...] = ("WeightBiasQuantization",)


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
