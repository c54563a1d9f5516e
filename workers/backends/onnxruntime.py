"""ONNX Runtime on the CPU: the build is the optimised model ORT writes for the chosen options."""

from __future__ import annotations

import os
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from workers.backends.base import NO_CONTEXT, Availability, Backend, BackendUnavailable, BuildContext, Feeds, Runner, Step
from workers.cpu_sessions import DISABLED_OPTIMIZERS, cpu_graph_optimization, cpu_inference_session
from workers.memory import PeakMemory
from workers.precision import onnxruntime_int8_layout
from workers.structs import BuildRequest, Engine, Manifest, TensorSpec

OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")


def _session_options(options: dict[str, Any], level: str) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    so.intra_op_num_threads = int(options.get("intra_op_threads", 0))
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


class OnnxRuntimeBackend(Backend):
    name: ClassVar[str] = "onnxruntime"
    target_kinds: ClassVar[tuple[str, ...]] = ("cpu",)
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16", "int8", "fp8")

    def availability(self) -> Availability:
        try:
            version = metadata.version("onnxruntime")
        except metadata.PackageNotFoundError:
            return Availability(self.name, None, "pip install onnxruntime")
        return Availability(self.name, version, "CPUExecutionProvider")

    @staticmethod
    def int8_layout(cpu_arch: str, int8_dot_32bit: bool) -> str:
        """u8 activations (and 7-bit weights without VNNI) on x86: the form ORT's int8 kernels compute faithfully."""
        return onnxruntime_int8_layout(cpu_arch, int8_dot_32bit)

    def build(self, request: BuildRequest, variant: bytes, checkpoint: bytes | None, context: BuildContext = NO_CONTEXT) -> Engine:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable("onnxruntime is not installed: pip install onnxruntime") from exc
        level = str(request.options.get("graph_optimization_level", "all"))
        if level not in OPTIMIZATION_LEVELS:
            raise ValueError(f"graph_optimization_level {level!r}: expected one of {', '.join(OPTIMIZATION_LEVELS)}")
        notes = {}
        safe = cpu_graph_optimization(request.precision)
        if OPTIMIZATION_LEVELS.index(level) > OPTIMIZATION_LEVELS.index(safe):
            # ORT 1.32 fuses Relu into a following fp8 QuantizeLinear as if it were asymmetric int8, and
            # the outputs go wrong (workers/cpu_sessions.py): build at the highest level that stays right.
            notes["graph_optimization_level_used"] = safe
            level = safe
        started = time.perf_counter()
        with PeakMemory() as memory, tempfile.TemporaryDirectory() as tmp:
            optimized = Path(tmp) / "optimized.onnx"
            so = _session_options(request.options, level)
            so.optimized_model_filepath = os.fspath(optimized)
            session = cpu_inference_session(variant, so)  # WeightBiasQuantization off: it makes per-channel weights per-tensor
            optimized_model = optimized.read_bytes()
        manifest = Manifest(
            backend=self.name,
            backend_version=ort.__version__,
            target=request.target.id,
            precision=request.precision,
            options=dict(request.options),
            inputs=_specs(session.get_inputs()),
            outputs=_specs(session.get_outputs()),
            model=request.model.name,
            variant_sha256="",
            extra={"providers": session.get_providers(), "disabled_optimizers": list(DISABLED_OPTIMIZERS), **notes},
        )
        seconds = time.perf_counter() - started
        log = build_log(ort.__version__, so, session.get_providers(), notes, len(variant), len(optimized_model), seconds)
        return Engine(data=optimized_model, manifest=manifest, seconds=seconds, log=log, peak_host_memory_bytes=memory.growth_bytes)

    def open(self, engine: bytes, manifest: Manifest, caches: tuple[bytes, ...] = ()) -> OnnxRuntimeRunner:
        return OnnxRuntimeRunner(engine, manifest)


def build_log(version: str, so: Any, providers: list[str], notes: dict[str, str], variant_bytes: int, optimized_bytes: int,
              seconds: float) -> str:
    """What ORT was asked to do and did: its session options and providers, as the Build log tab shows a
    TensorRT builder's log (ORT itself logs nothing at the severity the farm runs it at)."""
    level = str(so.graph_optimization_level).rsplit(".", 1)[-1]
    lines = [f"onnxruntime {version}",
             f"providers: {', '.join(providers)}",
             f"graph_optimization_level: {level}"
             + (f" (lowered from the requested level: {notes['graph_optimization_level_used']} is the highest that keeps "
                "this precision's outputs right)" if "graph_optimization_level_used" in notes else ""),
             f"intra_op_num_threads: {so.intra_op_num_threads} (0: one per physical core)",
             f"inter_op_num_threads: {so.inter_op_num_threads}",
             f"execution_mode: {str(so.execution_mode).rsplit('.', 1)[-1]}",
             f"disabled_optimizers: {', '.join(DISABLED_OPTIMIZERS) or '-'}",
             f"optimised model: {variant_bytes / 1e6:.2f} MB in, {optimized_bytes / 1e6:.2f} MB out in {seconds:.2f} s"]
    return "\n".join(lines) + "\n"


class OnnxRuntimeRunner(Runner):
    """One InferenceSession on the CPU provider; a step is one `session.run` (no device, nothing to copy)."""

    def __init__(self, engine: bytes, manifest: Manifest) -> None:
        super().__init__(manifest.inputs, manifest.outputs)
        self._engine = engine
        self._options = manifest.options
        self._session: Any = None

    def _activate(self) -> None:
        # The model is already optimised at the build's level; optimising again would only cost load time.
        so = _session_options(self._options, "disable")
        self._session = cpu_inference_session(self._engine, so)

    def _deactivate(self) -> None:
        self._session = None

    def _infer(self, feeds: Feeds) -> list[np.ndarray]:
        return list(self._session.run(None, dict(feeds)))

    def _prepare(self, feeds: Feeds, data_transfers: bool) -> Step:
        session, bound = self._session, dict(feeds)

        def step() -> None:
            session.run(None, bound)

        return step


def _specs(values: Any) -> list[TensorSpec]:
    dtypes = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64", "tensor(int32)": "int32",
              "tensor(uint8)": "uint8", "tensor(int8)": "int8", "tensor(bool)": "bool", "tensor(double)": "float64"}
    return [TensorSpec(v.name, tuple(d if d is not None else "?" for d in v.shape), dtypes.get(v.type, v.type)) for v in values]
