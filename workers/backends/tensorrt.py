"""TensorRT: datacenter TensorRT 10/11 (`tensorrt`) or TensorRT for RTX (`tensorrt_rtx`), chosen per build.

Both flavours share one build path: a strongly typed network from the ONNX parser (precision
lives in the ONNX graph), a batch-axis optimization profile, a workspace limit and an
optimization level. RTX builds ahead of time for a list of compute capabilities and works on
CPU-only machines; datacenter builds for the local GPU and may share a timing cache.

Types come from `tensorrt-stubs` (datacenter 10.13); the RTX module is API-compatible, so each
function that touches TensorRT binds the chosen module to the name `trt` at run time while
mypy sees the stubs. Names only one flavour has are reached through `getattr`.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.util
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from workers import cuda
from workers.backends.base import NO_CONTEXT, Availability, BackendUnavailable, BuildContext, ProgressCallback
from workers.bench import GpuTimer
from workers.structs import BuildRequest, Engine, Manifest, Target, TensorSpec

if TYPE_CHECKING:
    import tensorrt as trt

FLAVOURS = ("auto", "datacenter", "rtx")
MODULES = {"datacenter": "tensorrt", "rtx": "tensorrt_rtx"}
INSTALL = {"datacenter": "pip install 'farm[tensorrt]'", "rtx": "pip install 'farm[rtx]'"}
# Distributions that provide each module (the bindings wheel, or the meta package that pulls it).
DISTRIBUTIONS = {"datacenter": r"tensorrt(-cu\d+)?(-bindings)?", "rtx": r"tensorrt-rtx(-cu\d+)?(-bindings)?"}
OPTIONS = ("flavour", "workspace", "optimization_level", "compute_capabilities", "hardware_compatibility_level", "cuda_graph")
COMPATIBILITY_LEVELS = ("none", "ampere_plus", "same_compute_capability")
SEVERITIES = ("internal_error", "error", "warning", "info", "verbose")
RTX_PLAN_MAGIC = b"vtrt"  # seen on tensorrt-rtx 1.7.1 plans; datacenter plans were never built here


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
    """An Engine plus the datacenter timing cache after this build (None on RTX, which never has one)."""

    timing_cache: bytes | None = None


@dataclass(frozen=True)
class BuildOptions:
    """`request.options` checked and resolved: one error per bad value, before anything is built."""

    flavour: str  # "datacenter" | "rtx", never "auto"
    workspace: int | None  # bytes; None: TensorRT's default (all device memory)
    optimization_level: int
    compute_capabilities: tuple[str, ...]  # "sm_89", ...; RTX only
    hardware_compatibility_level: str
    cuda_graph: bool

    @staticmethod
    def parse(options: dict[str, Any], target: Target) -> BuildOptions:
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ValueError(f"tensorrt options {unknown}: unknown; known: {', '.join(OPTIONS)}")
        if target.kind not in TensorRTBackend.target_kinds:
            raise ValueError(f"tensorrt builds for gpu and rtx targets, not {target.id}")
        flavour = str(options.get("flavour", "auto"))
        if flavour not in FLAVOURS:
            raise ValueError(f"tensorrt flavour {flavour!r}: expected one of {', '.join(FLAVOURS)}")
        if flavour == "auto":
            flavour = "rtx" if target.kind == "rtx" else "datacenter"
        if flavour == "datacenter" and target.kind == "rtx":
            raise ValueError(f"target {target.id} is a TensorRT-RTX target: use flavour rtx (or auto)")
        level = options.get("optimization_level", 3)
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 5:
            raise ValueError(f"tensorrt optimization_level {level!r}: expected an integer 0..5")
        compatibility = str(options.get("hardware_compatibility_level", "none"))
        if compatibility not in COMPATIBILITY_LEVELS:
            expected = ", ".join(COMPATIBILITY_LEVELS)
            raise ValueError(f"tensorrt hardware_compatibility_level {compatibility!r}: expected one of {expected}")
        if compatibility != "none" and flavour == "rtx":
            raise ValueError("tensorrt hardware_compatibility_level is a datacenter option; RTX engines list compute_capabilities")
        capabilities: tuple[str, ...] = ()
        if flavour == "rtx":
            capabilities = _compute_capabilities(options.get("compute_capabilities"), target)
        elif "compute_capabilities" in options:
            raise ValueError("tensorrt compute_capabilities is an RTX option; a datacenter engine is built for the local GPU")
        cuda_graph = options.get("cuda_graph", False)
        if not isinstance(cuda_graph, bool):
            raise ValueError(f"tensorrt cuda_graph {cuda_graph!r}: expected true or false")
        workspace = parse_bytes(options["workspace"]) if "workspace" in options else None
        return BuildOptions(flavour, workspace, level, capabilities, compatibility, cuda_graph)


def _compute_capabilities(value: Any, target: Target) -> tuple[str, ...]:
    if value is None:
        # An RTX target names its capabilities ("sm_86+sm_89"); a GPU target has one.
        value = target.name.split("+") if target.kind == "rtx" else [f"sm_{(target.compute_capability or '').replace('.', '')}"]
    if isinstance(value, str) or not isinstance(value, list | tuple) or not value:
        raise ValueError(f"tensorrt compute_capabilities {value!r}: expected a non-empty list like ['sm_86', 'sm_89']")
    for item in value:
        if not isinstance(item, str) or not re.fullmatch(r"sm_\d{2,3}", item):
            raise ValueError(f"tensorrt compute capability {item!r}: expected a name like 'sm_89'")
    return tuple(dict.fromkeys(value))


_UNITS = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def parse_bytes(value: int | str) -> int | None:
    """A byte count from an int or a string like "64MiB", "1GiB", "512KiB"; "unlimited" is None."""
    if isinstance(value, bool):
        raise ValueError(f"workspace {value!r}: expected bytes (an integer) or a size like '64MiB', '1GiB', 'unlimited'")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"workspace {value}: must be a positive number of bytes")
        return value
    text = str(value).strip()
    if text.lower() == "unlimited":
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)", text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        hint = " (binary units: KiB, MiB, GiB, TiB)" if match and unit in ("kb", "mb", "gb", "tb", "k", "m", "g") else ""
        raise ValueError(f"workspace {value!r}: expected bytes or a size like '64MiB', '1GiB', '512KiB', 'unlimited'{hint}")
    size = float(match.group(1)) * _UNITS[unit]
    if size < 1 or size != int(size):
        raise ValueError(f"workspace {value!r}: must be a whole, positive number of bytes")
    return int(size)


def plan_flavour(plan: bytes) -> str | None:
    """"rtx" for a TensorRT-RTX plan (it starts with b"vtrt"), else None: this header is all farm has checked."""
    return "rtx" if plan[: len(RTX_PLAN_MAGIC)] == RTX_PLAN_MAGIC else None


def installed_version(flavour: str) -> str | None:
    """The installed version of a flavour's Python module, found without importing it."""
    try:
        spec = importlib.util.find_spec(MODULES[flavour])
    except (ImportError, ValueError):
        return None
    # tensorrt-stubs leaves a `tensorrt/` folder of .pyi files: a namespace package with no origin, not TensorRT.
    if spec is None or spec.origin is None:
        return None
    pattern = re.compile(DISTRIBUTIONS[flavour])
    for dist in metadata.distributions():
        name = re.sub(r"[-_.]+", "-", dist.metadata["Name"] or "").lower()
        if pattern.fullmatch(name):
            return dist.version
    try:  # not from a wheel (a tar install on PYTHONPATH): only the module knows its version
        return str(import_flavour(flavour).__version__)
    except (BackendUnavailable, AttributeError):
        return None


def runtime_status() -> str:
    """Whether engines can run here: cuda-python and a CUDA GPU (builds need neither on RTX)."""
    try:
        device = cuda.describe_device()
    except cuda.CudaError as exc:
        reason = "cuda-python missing" if "not installed" in str(exc) else "no CUDA GPU"
        return f"none ({reason}: builds only)"
    return f"{device['name']} sm_{device['compute_capability'].replace('.', '')}"


def import_flavour(flavour: str) -> ModuleType:
    """The flavour's TensorRT module, or BackendUnavailable with the line that installs it."""
    missing = f"tensorrt flavour {flavour}: module {MODULES[flavour]} is not installed ({INSTALL[flavour]})"
    try:
        module = importlib.import_module(MODULES[flavour])
    except ImportError as exc:
        raise BackendUnavailable(missing) from exc
    except OSError as exc:  # the bindings wheel without its shared libraries (libnvinfer) installs but cannot load
        raise BackendUnavailable(f"tensorrt flavour {flavour}: {MODULES[flavour]} is installed but cannot load ({exc})") from exc
    if not hasattr(module, "Builder"):  # the stubs' namespace package imports, but is not TensorRT
        raise BackendUnavailable(missing)
    return module


def version_label(flavour: str, version: str) -> str:
    return f"rtx {version}" if flavour == "rtx" else version


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


class PeakMemory:
    """Peak resident memory of this process inside `with`, above what it held on entry, sampled every 10 ms.

    The kernel's own high-water mark (ru_maxrss) cannot be reset, so in a worker that already
    exported a model it reports no growth for most builds; sampling sees the build's own peak,
    at the price of missing spikes shorter than the interval.
    """

    def __init__(self, interval_s: float = 0.01) -> None:
        self.interval_s = interval_s
        self.growth_bytes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        import psutil

        process = psutil.Process()  # type: ignore[no-untyped-call]
        start = process.memory_info().rss

        def sample() -> None:
            while True:
                self.samples += 1
                self.growth_bytes = max(self.growth_bytes, process.memory_info().rss - start)
                if self._stop.wait(self.interval_s):
                    return

        self._thread = threading.Thread(target=sample, name="peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


class TensorRTBackend:
    name: ClassVar[str] = "tensorrt"
    target_kinds: ClassVar[tuple[str, ...]] = ("gpu", "rtx")
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
        options = BuildOptions.parse(request.options, request.target)
        if not request.batch_sizes or min(request.batch_sizes) < 1:
            raise ValueError(f"batch sizes {request.batch_sizes}: expected at least one positive size")
        module = import_flavour(options.flavour)
        record = BuildLog()
        started = time.perf_counter()
        with PeakMemory() as memory, _collected_outside_callbacks():
            built = _build(module, request, variant, options, record, self.log_severity, context)
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
                "given": len(context.timing_caches),
                "given_bytes": sum(len(c) for c in context.timing_caches),
                "returned_bytes": len(built.timing_cache or b""),
            }
        if layers is not None:
            extra["layers"] = layers
        manifest = Manifest(
            backend=self.name,
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
            timing_cache=built.timing_cache,
        )

    def open(self, engine: bytes, manifest: Manifest) -> TensorRTRunner:
        return TensorRTRunner(engine, manifest)


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
        if context.timing_caches:  # creating one on RTX forces a GPU query and breaks CPU-only builds
            record.messages.append(("INFO", "farm: timing cache ignored: TensorRT-RTX has none"))
    else:
        levels = trt.HardwareCompatibilityLevel
        compatibility = {
            "none": levels.NONE,
            "ampere_plus": levels.AMPERE_PLUS,
            "same_compute_capability": levels.SAME_COMPUTE_CAPABILITY,
        }
        config.hardware_compatibility_level = compatibility[options.hardware_compatibility_level]
        cache = _combined_timing_cache(config, context.timing_caches, record)
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


@dataclass
class _Binding:
    name: str
    host: cuda.PinnedBuffer
    device: cuda.DeviceBuffer
    shape: tuple[int, ...]
    dtype: np.dtype[Any]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def view(self) -> np.ndarray:
        return self.host.array(self.dtype, self.shape)

    def close(self) -> None:
        self.device.close()
        self.host.close()


class TensorRTRunner:
    """Runs a plan on the local GPU: pinned host and device buffers per tensor, one stream, events around the engine.

    A step is copy in, execute, copy out; the events bracket only the execute (or its CUDA
    graph replay when the build's options say `cuda_graph: true`), so `gpu_timer()` reads
    the engine's compute time apart from the copies.
    """

    def __init__(self, plan: bytes, manifest: Manifest) -> None:
        self._plan = plan
        self.inputs = manifest.inputs
        self.outputs = manifest.outputs
        self._flavour = str(manifest.extra.get("flavour") or plan_flavour(plan) or "datacenter")
        self._graph_replay = bool(manifest.options.get("cuda_graph", False))
        self._record = BuildLog()
        self._module: ModuleType | None = None
        self._stack: ExitStack | None = None
        self._keep: tuple[Any, ...] = ()  # the logger and runtime must outlive the engine
        self._engine: trt.ICudaEngine | None = None
        self._context: trt.IExecutionContext | None = None
        self._stream: cuda.Stream | None = None
        self._events: tuple[cuda.Event, cuda.Event] | None = None
        self._bindings: dict[str, _Binding] = {}
        self._outputs: list[_Binding] = []  # the last prepared step's outputs, in manifest order
        self._graph: cuda.Graph | None = None

    def __enter__(self) -> TensorRTRunner:
        module = import_flavour(self._flavour)
        if TYPE_CHECKING:
            import tensorrt as trt
        else:
            trt = module
        logger, _ = _listeners(module, self._record, "warning", None)
        with _collected_outside_callbacks():
            runtime = trt.Runtime(logger)
            engine = runtime.deserialize_cuda_engine(self._plan)
        if engine is None:
            reason = "; ".join(self._record.errors()) or "no error was logged"
            raise BackendUnavailable(f"TensorRT ({self._flavour}) {module.__version__} cannot load this engine here: {reason}")
        names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
        expected = {spec.name for spec in (*self.inputs, *self.outputs)}
        if names != expected:
            raise ValueError(f"engine tensors {sorted(names)} do not match the manifest's {sorted(expected)}")
        stack = ExitStack()
        try:
            self._stream = stack.enter_context(cuda.Stream())
            self._events = (stack.enter_context(cuda.Event()), stack.enter_context(cuda.Event()))
            self._context = engine.create_execution_context()
            if self._context is None:
                raise RuntimeError(f"TensorRT could not create an execution context: {'; '.join(self._record.errors())}")
        except BaseException:
            stack.close()
            raise
        self._module, self._keep, self._engine, self._stack = module, (logger, runtime), engine, stack
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._stream is not None:
                self._stream.synchronize()
        finally:
            self._drop_graph()
            self._context = None
            self._engine = None
            for binding in self._bindings.values():
                binding.close()
            self._bindings = {}
            if self._stack is not None:
                self._stack.close()
            self._stack, self._stream, self._events, self._keep, self._module = None, None, None, (), None

    def _drop_graph(self) -> None:
        if self._graph is not None:
            self._graph.close()
            self._graph = None

    def _bind(self, name: str, shape: tuple[int, ...], dtype: np.dtype[Any]) -> _Binding:
        """A host/device pair for `name`, reusing the previous one when it is large enough."""
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        old = self._bindings.get(name)
        if old is not None and old.host.nbytes >= nbytes:
            binding = _Binding(name, old.host, old.device, shape, dtype)
        else:
            if old is not None:
                old.close()
            host = cuda.PinnedBuffer(nbytes)
            try:
                device = cuda.DeviceBuffer(nbytes)
            except BaseException:
                host.close()
                raise
            binding = _Binding(name, host, device, shape, dtype)
        self._bindings[name] = binding
        assert self._context is not None
        if not self._context.set_tensor_address(name, binding.device.ptr):
            raise RuntimeError(f"TensorRT refused the device address of tensor {name}")
        return binding

    def prepare(self, feeds: dict[str, np.ndarray]) -> Callable[[], None]:
        context, engine, stream, events = self._context, self._engine, self._stream, self._events
        if context is None or engine is None or stream is None or events is None:
            raise RuntimeError("TensorRTRunner used outside `with runner:`")
        if TYPE_CHECKING:
            import tensorrt as trt
        else:
            trt = self._module
        stream.synchronize()  # the host buffers are about to be rewritten and may be freed; earlier steps become invalid
        self._drop_graph()
        inputs: list[_Binding] = []
        for spec in self.inputs:
            dtype = np.dtype(_numpy_dtype(engine.get_tensor_dtype(spec.name)))
            array = np.ascontiguousarray(feeds[spec.name], dtype=dtype)
            if not context.set_input_shape(spec.name, trt.Dims(list(array.shape))):
                raise ValueError(f"input {spec.name}: shape {array.shape} is outside the engine's profile")
            binding = self._bind(spec.name, array.shape, dtype)
            binding.view()[...] = array
            inputs.append(binding)
        outputs: list[_Binding] = []
        for spec in self.outputs:
            shape = _dims(context.get_tensor_shape(spec.name))
            if any(d < 0 for d in shape):
                raise ValueError(f"output {spec.name} has a data-dependent shape {shape}: not supported by this runner")
            outputs.append(self._bind(spec.name, shape, np.dtype(_numpy_dtype(engine.get_tensor_dtype(spec.name)))))

        def execute() -> None:
            if not context.execute_async_v3(stream.ptr):
                raise RuntimeError("TensorRT execute_async_v3 failed")

        run = execute
        if self._graph_replay:
            execute()  # the first enqueue after a shape change does setup work that must not be captured
            stream.synchronize()
            graph = self._graph = cuda.Graph(stream, execute)
            run = lambda: graph.launch(stream)  # noqa: E731
        start, end = events

        def step() -> None:
            for binding in inputs:
                cuda.copy_to_device(binding.device, binding.host, binding.nbytes, stream)
            start.record(stream)
            run()
            end.record(stream)
            for binding in outputs:
                cuda.copy_to_host(binding.host, binding.device, binding.nbytes, stream)

        self._outputs = outputs
        return step

    def infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        step = self.prepare(feeds)
        step()
        self.synchronize()
        return [binding.view().copy() for binding in self._outputs]

    def synchronize(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()

    def gpu_timer(self) -> GpuTimer | None:
        if self._events is None:
            return None
        start, end = self._events
        return lambda: cuda.Event.elapsed_ms(start, end)
