"""Building a TensorRT plan: the builder, its logger and progress listeners, and what a build measures.

The builder's logger and progress monitor are Python subclasses that TensorRT calls from
its own threads; they write into a BuildLog, and a progress callback that raises cancels
the build instead of crossing into C++. `_collected_outside_callbacks` keeps Python's
garbage collector out of those callbacks (see its docstring): every TensorRT call that can
log (build, layer inspection, and the runner's deserialize) runs inside it.

The runner (workers.backends.tensorrt.runner) shares the listeners and the tensor helpers here.
"""

from __future__ import annotations

import contextlib
import gc
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

from workers.backends.base import BuildContext, ProgressCallback
from workers.backends.tensorrt.options import NAME, BuildOptions, import_flavour, version_label
from workers.memory import PeakMemory
from workers.structs import BuildRequest, Engine, Manifest, TensorSpec

if TYPE_CHECKING:
    import tensorrt as trt

SEVERITIES = ("internal_error", "error", "warning", "info", "verbose")


class BuildError(RuntimeError):
    """The builder returned no engine; `log` holds everything it said."""

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message)
        self.log = log


@dataclass(frozen=True)
class ParserIssue:
    node: int  # -1 when the error is not about one node
    node_name: str
    operator: str
    code: str
    description: str

    def __str__(self) -> str:
        where = f"node {self.node} {self.node_name!r} ({self.operator})" if self.node >= 0 else "model"
        return f"{where}: {self.code}: {self.description}"


class OnnxParseError(BuildError):
    """TensorRT's ONNX parser rejected the variant; `issues` names each node it could not import."""

    def __init__(self, issues: list[ParserIssue], flavour: str, log: str = "") -> None:
        lines = "\n".join(f"  {issue}" for issue in issues)
        super().__init__(f"TensorRT ({flavour}) ONNX parser rejected the model, {len(issues)} error(s):\n{lines}", log)
        self.issues = issues


@dataclass
class TensorRTEngine(Engine):
    """An Engine whose builder_cache is the datacenter timing cache after this build (None on RTX, which never has one)."""


@dataclass
class Phase:
    name: str
    parent: str | None
    steps: int
    done: int = 0


@dataclass
class BuildLog:
    """What the builder said (severity, text) and the phases its progress monitor went through."""

    messages: list[tuple[str, str]] = field(default_factory=list)
    phases: list[Phase] = field(default_factory=list)
    callback_error: BaseException | None = None

    def text(self) -> str:
        return "\n".join(f"[{severity}] {message}" for severity, message in self.messages)

    def errors(self) -> list[str]:
        return [message for severity, message in self.messages if severity in ("INTERNAL_ERROR", "ERROR")]


def _listeners(
    module: ModuleType, record: BuildLog, min_severity: str, progress: ProgressCallback | None
) -> tuple[trt.ILogger, trt.IProgressMonitor]:
    """A logger and a progress monitor of the chosen module that write into `record`."""
    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = module
    keep = set(SEVERITIES[: SEVERITIES.index(min_severity) + 1])

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            if severity.name.lower() in keep:
                record.messages.append((severity.name, msg))

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.open: dict[str, Phase] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            phase = Phase(phase_name, parent_phase, num_steps)
            self.open[phase_name] = phase
            record.phases.append(phase)

        def step_complete(self, phase_name: str, step: int) -> bool:
            phase = self.open.get(phase_name)
            if phase is not None:
                phase.done = step + 1
            if progress is None:
                return True
            if record.callback_error is not None:
                return False
            try:
                return progress(phase_name, step + 1, phase.steps if phase else 0) is not False
            except Exception as exc:  # must not cross into TensorRT's C++ thread: cancel, re-raise after the build
                record.callback_error = exc
                return False

        def phase_finish(self, phase_name: str) -> None:
            self.open.pop(phase_name, None)

    return Logger(), Monitor()


def build_engine(request: BuildRequest, variant: bytes, log_severity: str, context: BuildContext) -> TensorRTEngine:
    """Build one engine for `request.target`; the context's timing caches (datacenter only) seed the builder's.

    Options are checked first, then the flavour imported: a bad option never waits for TensorRT.
    """
    options = BuildOptions.parse(request.options, request.target)
    if not request.batch_sizes or min(request.batch_sizes) < 1:
        raise ValueError(f"batch sizes {request.batch_sizes}: expected at least one positive size")
    module = import_flavour(options.flavour)
    record = BuildLog()
    started = time.perf_counter()
    with PeakMemory() as memory, _collected_outside_callbacks():
        built = _build(module, request, variant, options, record, log_severity, context)
        seconds = time.perf_counter() - started
        # An RTX plan is for other GPUs and cannot load without one; a datacenter build has its GPU right here.
        layers = _layer_information(module, record, built.plan) if options.flavour == "datacenter" else None
    peak_growth = memory.growth_bytes
    extra: dict[str, Any] = {
        "flavour": options.flavour,
        "tensorrt_version": module.__version__,
        "compute_capabilities": list(options.compute_capabilities),
        "hardware_compatibility_level": options.hardware_compatibility_level,
        "workspace_bytes": options.workspace,
        "optimization_level": options.optimization_level,
        "profile": built.profile,
        "network_layers": built.network_layers,
        "progress": [{"phase": p.name, "parent": p.parent, "steps": p.steps, "done": p.done} for p in record.phases],
        "build_seconds": seconds,
        "peak_host_memory_growth_bytes": peak_growth,
        "plan_bytes": len(built.plan),
    }
    if options.flavour == "datacenter":
        extra["timing_cache"] = {
            "given": len(context.caches),
            "given_bytes": sum(len(c) for c in context.caches),
            "returned_bytes": len(built.timing_cache or b""),
        }
    if layers is not None:
        extra["layers"] = layers
    manifest = Manifest(
        backend=NAME,
        backend_version=version_label(options.flavour, module.__version__),
        target=request.target.id,
        precision=request.precision,
        options=dict(request.options),
        inputs=built.inputs,
        outputs=built.outputs,
        model=request.model.name,
        variant_sha256="",
        extra=extra,
    )
    return TensorRTEngine(
        data=built.plan,
        manifest=manifest,
        log=record.text(),
        seconds=seconds,
        peak_host_memory_bytes=peak_growth,
        builder_cache=built.timing_cache,
    )


@contextlib.contextmanager
def _collected_outside_callbacks() -> Iterator[None]:
    """Free garbage TensorRT objects now, and collect no garbage while TensorRT runs.

    TensorRT calls the Python logger while it holds its own lock (creating a builder does). A garbage
    collection that runs inside that callback and frees an earlier builder (one a failed build's
    traceback kept in a reference cycle) takes the same lock in the builder's destructor: the
    process deadlocks (seen here with TensorRT-RTX 1.7 in the test run).
    """
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass
class _Built:
    plan: bytes
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    profile: dict[str, list[int]]
    network_layers: int
    timing_cache: bytes | None


def _build(
    module: ModuleType,
    request: BuildRequest,
    variant: bytes,
    options: BuildOptions,
    record: BuildLog,
    log_severity: str,
    context: BuildContext,
) -> _Built:
    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = module
    logger, monitor = _listeners(module, record, log_severity, context.progress)
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)  # always on, maybe gone, in 11
    network = builder.create_network(1 << int(strongly_typed) if strongly_typed is not None else 0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(variant):
        raise OnnxParseError([_issue(parser.get_error(i)) for i in range(parser.num_errors)], options.flavour, record.text())

    config = builder.create_builder_config()
    if options.workspace is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace)
    config.builder_optimization_level = options.optimization_level
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    config.progress_monitor = monitor
    inputs, profile_shapes = _input_specs(network, request.batch_sizes)
    if profile_shapes:
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in profile_shapes.items():
            profile.set_shape(name, trt.Dims(list(low)), trt.Dims(list(opt)), trt.Dims(list(high)))
        config.add_optimization_profile(profile)

    cache: trt.ITimingCache | None = None
    if options.flavour == "rtx":
        _set_compute_capabilities(module, config, options.compute_capabilities)
        if context.caches:  # creating one on RTX forces a GPU query and breaks CPU-only builds
            record.messages.append(("INFO", "farm: timing cache ignored: TensorRT-RTX has none"))
    else:
        levels = trt.HardwareCompatibilityLevel
        compatibility = {
            "none": levels.NONE,
            "ampere_plus": levels.AMPERE_PLUS,
            "same_compute_capability": levels.SAME_COMPUTE_CAPABILITY,
        }
        config.hardware_compatibility_level = compatibility[options.hardware_compatibility_level]
        cache = _combined_timing_cache(config, context.caches, record)
        if not config.set_timing_cache(cache, False):
            record.messages.append(("WARNING", "farm: timing cache from another device or version: started an empty one"))
            cache = config.create_timing_cache(b"")
            config.set_timing_cache(cache, False)

    serialized = builder.build_serialized_network(network, config)
    if record.callback_error is not None:
        error = record.callback_error
        raise BuildError(f"build cancelled: the progress callback raised {error!r}", record.text()) from error
    if serialized is None:
        reason = "; ".join(record.errors()) or "no error was logged"
        raise BuildError(f"TensorRT ({options.flavour}) built no engine for {request.target.id}: {reason}", record.text())
    plan = bytes(serialized)
    del serialized
    return _Built(
        plan=plan,
        inputs=inputs,
        outputs=[_spec(network.get_output(i)) for i in range(network.num_outputs)],
        profile={name: [shapes[0][0], shapes[1][0], shapes[2][0]] for name, shapes in profile_shapes.items()},
        network_layers=network.num_layers,
        timing_cache=bytes(cache.serialize()) if cache is not None else None,
    )


def _combined_timing_cache(config: trt.IBuilderConfig, blobs: tuple[bytes, ...], record: BuildLog) -> trt.ITimingCache:
    """One cache from every blob the driver sent: the driver cannot combine them, having no TensorRT."""
    cache = config.create_timing_cache(blobs[0] if blobs else b"")
    for blob in blobs[1:]:
        if not cache.combine(config.create_timing_cache(blob), False):
            record.messages.append(("WARNING", "farm: a timing cache from another device or version was not combined"))
    return cache


def _issue(error: Any) -> ParserIssue:
    def read(name: str, default: Any) -> Any:
        method = getattr(error, name, None)  # node_name / node_operator are missing on older parsers
        return method() if method is not None else default

    return ParserIssue(
        node=int(read("node", -1)),
        node_name=str(read("node_name", "")),
        operator=str(read("node_operator", "")),
        code=getattr(read("code", ""), "name", str(read("code", ""))),
        description=str(read("desc", str(error))),
    )


def _spec(tensor: trt.ITensor) -> TensorSpec:
    shape = tuple("batch" if i == 0 and d < 0 else ("?" if d < 0 else d) for i, d in enumerate(_dims(tensor.shape)))
    return TensorSpec(tensor.name, shape, _numpy_dtype(tensor.dtype))


def _dims(dims: trt.Dims) -> tuple[int, ...]:
    return tuple(int(dims[i]) for i in range(len(dims)))


def _numpy_dtype(dtype: Any) -> str:
    names = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "INT32": "int32",
             "INT64": "int64", "BOOL": "bool", "UINT8": "uint8", "FP8": "float8_e4m3fn"}  # fmt: skip
    return str(names.get(dtype.name, dtype.name.lower()))


Shapes = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


def _input_specs(network: trt.INetworkDefinition, batch_sizes: tuple[int, ...]) -> tuple[list[TensorSpec], dict[str, Shapes]]:
    """Every input's spec, and (min, opt, max) shapes for those whose batch axis is dynamic."""
    specs: list[TensorSpec] = []
    shapes: dict[str, Shapes] = {}
    low, high = min(batch_sizes), max(batch_sizes)
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = _dims(tensor.shape)
        if any(d < 0 for d in dims[1:]):
            raise ValueError(f"input {tensor.name} has shape {dims}: only the batch axis (0) may be dynamic")
        if dims and dims[0] < 0:
            rest = dims[1:]
            shapes[tensor.name] = ((low, *rest), (high, *rest), (high, *rest))
        elif dims and set(batch_sizes) != {dims[0]}:
            raise ValueError(f"input {tensor.name} has a fixed batch of {dims[0]}; cannot build for batch sizes {batch_sizes}")
        specs.append(_spec(tensor))
    return specs, shapes


def _set_compute_capabilities(module: ModuleType, config: Any, names: tuple[str, ...]) -> None:
    # ComputeCapability, num_compute_capabilities and set_compute_capability exist on RTX only.
    known = getattr(module, "ComputeCapability").__members__
    wanted = [name.replace("sm_", "SM") for name in names]
    missing = [n for n, w in zip(names, wanted, strict=True) if w not in known]
    if missing:
        supported = ", ".join(f"sm_{k[2:]}" for k in known if k.startswith("SM"))
        raise ValueError(f"TensorRT-RTX {module.__version__} cannot build for {', '.join(missing)}; it supports {supported}")
    config.num_compute_capabilities = len(wanted)  # before set_compute_capability, which checks the index against it
    for index, name in enumerate(wanted):
        if not config.set_compute_capability(known[name], index):
            raise ValueError(f"TensorRT-RTX refused compute capability {names[index]}")


def _layer_information(module: ModuleType, record: BuildLog, plan: bytes) -> dict[str, Any] | None:
    """The engine inspector's JSON (per-layer tactics, formats, precisions), where this machine can load the plan."""
    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = module
    logger, _ = _listeners(module, record, "warning", None)
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    if engine is None:
        return None
    info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    return dict(json.loads(info))
