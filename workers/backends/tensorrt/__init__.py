"""TensorRT: datacenter TensorRT 10/11 (`tensorrt`) or TensorRT for RTX (`tensorrt_rtx`), chosen per build.

Both flavours share one build path: a strongly typed network from the ONNX parser (precision
lives in the ONNX graph), a batch-axis optimization profile, a workspace limit and an
optimization level. RTX builds ahead of time for a list of compute capabilities and works on
CPU-only machines; datacenter builds for the local GPU and may share a timing cache.

Types come from `tensorrt-stubs` (datacenter 10.13); the RTX module is API-compatible, so each
function that touches TensorRT binds the chosen module to the name `trt` at run time while
mypy sees the stubs. Names only one flavour has are reached through `getattr`.

By role, as Polygraphy splits backend/trt/: `options` (what a build is asked for, which
flavours are installed), `build` (the builder, its listeners and the garbage-collection
guard), `runner` (TensorRTRunner on cuda-python). This module holds the Backend and
re-exports the names callers import from `workers.backends.tensorrt`.
"""

from __future__ import annotations

from typing import ClassVar

from workers.backends.base import NO_CONTEXT, Availability, Backend, BuildContext
from workers.backends.tensorrt.build import (
    SEVERITIES,
    BuildError,
    BuildLog,
    OnnxParseError,
    ParserIssue,
    Phase,
    TensorRTEngine,
    build_engine,
)
from workers.backends.tensorrt.options import (
    COMPATIBILITY_LEVELS,
    DISTRIBUTIONS,
    FLAVOURS,
    INSTALL,
    MODULES,
    NAME,
    OPTIONS,
    RTX_PLAN_MAGIC,
    TARGET_KINDS,
    BuildOptions,
    import_flavour,
    installed_version,
    parse_bytes,
    plan_flavour,
    runtime_status,
    version_label,
)
from workers.backends.tensorrt.runner import TensorRTRunner
from workers.memory import PeakMemory
from workers.structs import BuildRequest, Manifest


class TensorRTBackend(Backend):
    name: ClassVar[str] = NAME
    target_kinds: ClassVar[tuple[str, ...]] = TARGET_KINDS
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16", "int8", "fp8")
    batch_profile: ClassVar[bool] = True  # the engine is built for the request's batch sizes: they belong in the build key
    version_keys: ClassVar[dict[str, str]] = {"gpu": "tensorrt", "rtx": "tensorrt-rtx"}  # the flavour each target kind needs

    def __init__(self, log_severity: str = "verbose") -> None:
        if log_severity not in SEVERITIES:
            raise ValueError(f"log_severity {log_severity!r}: expected one of {', '.join(SEVERITIES)}")
        self.log_severity = log_severity

    def availability(self) -> Availability:
        found = {flavour: installed_version(flavour) for flavour in ("datacenter", "rtx")}
        present = [version_label(f, v) for f, v in found.items() if v is not None]
        if not present:
            hint = f"not installed: {INSTALL['rtx']} (TensorRT-RTX, builds on CPU) or {INSTALL['datacenter']}"
            return Availability(self.name, None, hint)
        detail = "; ".join(
            f"{flavour}: {MODULES[flavour]} {version}" if version else f"{flavour}: missing ({INSTALL[flavour]})"
            for flavour, version in found.items()
        )
        return Availability(self.name, ", ".join(present), f"{detail}; runtime: {runtime_status()}")

    def versions(self) -> dict[str, str]:
        found = {key: installed_version(flavour) for key, flavour in (("tensorrt", "datacenter"), ("tensorrt-rtx", "rtx"))}
        return {key: version_label("rtx" if key == "tensorrt-rtx" else "datacenter", v) for key, v in found.items() if v}


    def build(
        self, request: BuildRequest, variant: bytes, checkpoint: bytes | None, context: BuildContext = NO_CONTEXT
    ) -> TensorRTEngine:
        """Build one engine for `request.target`; the context's timing caches (datacenter only) seed the builder's."""
        return build_engine(request, variant, self.log_severity, context)

    @staticmethod
    def cache_key(request: BuildRequest, backend_version: str) -> str | None:
        """Datacenter builds on a GPU share timing caches per (GPU kind, TensorRT version); RTX has none."""
        return backend_version if request.target.kind == "gpu" else None

    def open(self, engine: bytes, manifest: Manifest, caches: tuple[bytes, ...] = ()) -> TensorRTRunner:
        return TensorRTRunner(engine, manifest)


__all__ = [
    "COMPATIBILITY_LEVELS",
    "DISTRIBUTIONS",
    "FLAVOURS",
    "INSTALL",
    "MODULES",
    "OPTIONS",
    "RTX_PLAN_MAGIC",
    "SEVERITIES",
    "BuildError",
    "BuildLog",
    "BuildOptions",
    "OnnxParseError",
    "ParserIssue",
    "PeakMemory",
    "Phase",
    "TensorRTBackend",
    "TensorRTEngine",
    "TensorRTRunner",
    "import_flavour",
    "installed_version",
    "parse_bytes",
    "plan_flavour",
    "runtime_status",
    "version_label",
]
