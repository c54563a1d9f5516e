"""PyTorch as a backend: the eager baseline every table compares with, and the engine kinds a GPU
runs without TensorRT: CUDA graph replay, torch.compile, AOTInductor.

It builds from the export's checkpoint (the very weights the ONNX variants carry), in fp32, fp16
or bf16 by casting the module, so every speedup is measured against the same numbers. What a
build leaves depends on the kind:

| kind | engine bytes | reproducible |
| --- | --- | --- |
| eager, cuda_graph | the checkpoint (a recipe: model source + weights + options) | anywhere the model's code imports |
| compile | the checkpoint; the build compiles once per batch size and returns Inductor's caches | in-process only: the runner compiles again, warm from the caches |
| aoti | the AOTInductor package (.pt2): native code for this GPU architecture and torch version | loads without the model's Python code |

An AOTInductor package is loaded once in a fresh interpreter before the build is declared good:
torch 2.11 segfaulted loading one on the H200, and that must be a failed build with its log.

The package, by role: `options` (what an engine is made of, from the spec's axes), `engines`
(the runners of a module: eager, cuda_graph, compile), `aoti` (AOTInductor packages; `aoti_child`
loads one in a fresh process), `kinds` (the kind -> runner table behind open_engine),
`compile_cache` (Inductor's caches as a blob) and `quant` (torchao). torch itself is imported
only inside functions: `import workers` works on a machine without it.
"""

from __future__ import annotations

import io
import time
from dataclasses import asdict
from importlib import metadata
from typing import Any, ClassVar

import numpy as np

from workers.backends.base import NO_CONTEXT, Availability, Backend, BackendUnavailable, BuildContext, Runner
from workers.backends.torch.aoti import build_aoti_package, check_aoti_package
from workers.backends.torch.compile_cache import export_compile_caches, import_compile_caches
from workers.backends.torch.engines import INPUT
from workers.backends.torch.kinds import open_engine
from workers.backends.torch.options import TorchEngineOptions, engine_options
from workers.backends.torch.quant import RECIPES
from workers.memory import PeakMemory
from workers.models import BATCH_AXIS, load_module
from workers.structs import BuildRequest, Engine, Manifest, ModelRef, TensorSpec

LOAD_HINTS = {
    "aoti": "python: runner = torch._inductor.aoti_load_package('engine.pt2'); outputs = runner(x) "
            "(x: a {dtype} tensor on {device}, batch {low}..{high}, shape {shape}); needs torch {torch} and a GPU of compute capability {cc}",
    "compile": "a recipe, reproducible in-process only: build the model (manifest model_ref), load engine.pt (torch.load, "
               "weights_only=True), cast to {dtype}{quantize}, then {compile_call} under torch.inference_mode()",
    "eager": "build the model (manifest model_ref), load engine.pt (torch.load, weights_only=True), cast to {dtype}{quantize}, run",
    "cuda_graph": "build the model (manifest model_ref), load engine.pt (torch.load, weights_only=True), cast to {dtype}{quantize}, "
                  "capture one torch.cuda.CUDAGraph per batch size and replay it",
}


def _compile_call(options: TorchEngineOptions) -> str:
    """The torch.compile call a compiled engine was made with, as a user would type it."""
    if options.coordinate_descent is not None:
        call = f"torch.compile(model, options={options.inductor_options()!r}, dynamic=False)"
    else:
        call = f"torch.compile(model, mode='{options.mode}', dynamic=False)"
    if options.inductor_config:  # set where Dynamo reads it: around the first call, which compiles
        return f"{call}, its first call inside torch._inductor.config.patch({options.inductor_config!r})"
    return call


def _quantize_step(options: TorchEngineOptions) -> str:
    if options.quantize is None:
        return ""
    return f", then torchao's quantize_(model, {RECIPES[options.quantize]})"


# What the build log says when a CUDA package crashes its loader (benchmarks/aoti_probe.py, docs/gpu.md).
AOTI_LOAD_CRASH = (
    "known: torch 2.11 (CUDA 13.0) segfaults loading any CUDA AOTInductor package on the H100 and H200 "
    "(a 10-layer convnet too), whatever the process did first (CUDA context, torch._inductor.codecache); "
    "closest upstream reports: pytorch/pytorch#166415 (a CUDA 13 package segfaulting, torch 2.10) and "
    "pytorch/pytorch#173706 (a package failing to load in a fresh process, 2.10). No workaround found: use kind compile"
)


class BuildError(RuntimeError):
    """A PyTorch engine could not be made, or made and not loaded; the log says where."""


def _device(request: BuildRequest) -> str:
    return "cuda" if request.target.kind == "gpu" else "cpu"


class TorchBackend(Backend):
    name: ClassVar[str] = "torch"
    target_kinds: ClassVar[tuple[str, ...]] = ("cpu", "gpu")
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16", "bf16")
    consumes: ClassVar[str] = "checkpoint"  # builds from the export's weights, never from an ONNX variant
    batch_profile: ClassVar[bool] = True  # aoti bakes the batch range in, compile compiles each size: part of the build key

    def availability(self) -> Availability:
        try:
            version = metadata.version("torch")
        except metadata.PackageNotFoundError:
            return Availability(self.name, None, "pip install torch")
        return Availability(self.name, version, "eager, cuda_graph, compile, aoti")

    @staticmethod
    def applies(options: dict[str, Any], precision: str, target_kind: str) -> dict[str, Any] | None:
        """The options a build of `precision` on `target_kind` really uses, or None where they cannot run.

        compile_mode means something for kind compile only, tf32 for fp32 only, and CUDA graphs
        and TF32 need a GPU: the planner drops what does not apply, so no two builds differ only
        in an option neither uses.
        """
        kind = options.get("kind", options.get("mode", "eager"))
        if kind == "cuda_graph" and target_kind != "gpu":
            return None
        used = dict(options)
        # Options at their default leave the options (and so the build keys) as they were before they existed.
        for name, default in (("freezing", False), ("coordinate_descent", None), ("quantize", None)):
            if name in used and used[name] == default:
                del used[name]
        if kind != "compile":
            used.pop("compile_mode", None)
            if "freezing" in used or "coordinate_descent" in used:
                return None  # Inductor options: a build of another kind would only repeat the plain one
        quantize = used.get("quantize")
        if quantize is not None and (kind == "aoti" or (quantize.startswith("fp8") and (precision != "bf16" or target_kind != "gpu"))):
            return None
        if precision != "fp32" or target_kind != "gpu":
            if used.get("tf32"):
                return None
            used.pop("tf32", None)
        return used

    @staticmethod
    def cache_key(request: BuildRequest, backend_version: str) -> str | None:
        """torch.compile's caches are shared per (target, torch version)."""
        kind = request.options.get("kind", request.options.get("mode", "eager"))
        return f"inductor {backend_version}" if kind == "compile" else None

    def build(self, request: BuildRequest, variant: bytes | None, checkpoint: bytes | None, context: BuildContext = NO_CONTEXT) -> Engine:
        if checkpoint is None:
            raise BackendUnavailable(f"model {request.model.name}: an ONNX-file source has no PyTorch module to run")
        import torch

        options = engine_options(request.options, request.precision)
        device = _device(request)
        options.check_device(device)
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable(f"target {request.target.id}: CUDA is not available on this worker")
        started = time.perf_counter()
        version = str(torch.__version__)  # a plain str, as in workers.models.export: the driver reads the manifest
        extra: dict[str, Any] = {"model_ref": asdict(request.model), "device": device, "kind": options.kind,
                                 "engine_options": options.to_dict(), "torch_version": version,
                                 "cuda_version": torch.version.cuda, "compute_capability": request.target.compute_capability,
                                 "batch_range": [min(request.batch_sizes), max(request.batch_sizes)],
                                 "batch_sizes": sorted(request.batch_sizes)}
        with PeakMemory(0.05, children=True) as memory:
            module = _module(request.model, checkpoint)
            data, builder_cache = checkpoint, None
            if options.kind == "aoti":
                data = _aoti(module, request, options, device, extra)
            elif options.kind == "compile":
                builder_cache = _compile(module, request, options, device, context.caches, extra)
        seconds = time.perf_counter() - started
        extra["how_to_load"] = LOAD_HINTS[options.kind].format(
            dtype={"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[options.precision], device=device,
            low=extra["batch_range"][0], high=extra["batch_range"][1], shape=list(request.model.input_shape),
            torch=version, cc=request.target.compute_capability, compile_call=_compile_call(options),
            quantize=_quantize_step(options))
        extra["reproducible"] = "in-process only (a recipe)" if options.kind == "compile" else "anywhere"
        if options.kind != "aoti":
            extra["engine_file"] = "engine.pt"
        key = self.cache_key(request, version)
        if key is not None:
            extra["builder_cache_key"] = key
        manifest = Manifest(
            backend=self.name,
            backend_version=version,
            target=request.target.id,
            precision=request.precision,
            options=dict(request.options),
            inputs=[TensorSpec("input", (BATCH_AXIS, *request.model.input_shape), "float32")],
            outputs=[],
            model=request.model.name,
            variant_sha256="",
            extra=extra,
        )
        return Engine(data=data, manifest=manifest, seconds=seconds, peak_host_memory_bytes=memory.growth_bytes + memory.peak_children_bytes,
                      builder_cache=builder_cache)

    def open(self, engine: bytes, manifest: Manifest, caches: tuple[bytes, ...] = ()) -> Runner:
        options = engine_options(manifest.options, manifest.precision)
        device = str(manifest.extra.get("device", "cpu"))
        ref = dict(manifest.extra["model_ref"])
        ref["input_shape"] = tuple(ref["input_shape"])
        ref["kwargs"] = tuple(tuple(pair) for pair in ref.get("kwargs", ()))
        model = ModelRef(**ref)
        if options.kind == "aoti":
            return open_engine(engine, options, device, model.input_shape)
        if options.kind == "compile":
            for blob in caches:
                import_compile_caches(blob)
        runner = open_engine(_module(model, engine), options, device, model.input_shape)
        if options.kind in ("compile", "cuda_graph"):
            # Each new batch size costs a compile (minutes with max-autotune) or a capture: work at the built ones.
            runner.preferred_batches = tuple(manifest.extra.get("batch_sizes") or ())
        return runner


def _module(model: ModelRef, checkpoint: bytes) -> Any:
    """The model's module with the exported weights (proves the checkpoint fits the module)."""
    import torch

    module = load_module(model)
    module.load_state_dict(torch.load(io.BytesIO(checkpoint), weights_only=True))
    return module


def _aoti(module: Any, request: BuildRequest, options: TorchEngineOptions, device: str, extra: dict[str, Any]) -> bytes:
    """torch.export + AOTInductor for the request's batch range, then one load in a fresh interpreter."""
    package = build_aoti_package(module, request.model.input_shape, request.batch_sizes, options, device)
    extra |= {"export_seconds": package.export_seconds, "compile_seconds": package.compile_seconds,
              "package_bytes": package.size_bytes, "compile_peak_rss_bytes": package.peak_rss_bytes,
              "compile_peak_children_rss_bytes": package.peak_children_rss_bytes, "engine_file": "engine.pt2"}
    check = check_aoti_package(package.data, device)
    extra["load_check_seconds"] = check.seconds
    if not check.ok:
        known = f"\n{AOTI_LOAD_CRASH}" if check.returncode < 0 and device != "cpu" else ""
        raise BuildError(f"the AOTInductor package ({package.size_bytes / 1e6:.1f} MB, compiled in "
                         f"{package.compile_seconds:.0f} s) fails to load and run in a fresh process: "
                         f"{check.detail.splitlines()[0] if check.detail else ''}{known}\n{check.detail}")
    return package.data


def _compile(module: Any, request: BuildRequest, options: TorchEngineOptions, device: str, caches: tuple[bytes, ...],
             extra: dict[str, Any]) -> bytes | None:
    """Compile once per batch size (warm from earlier builds' caches) and return the caches to keep."""
    imported = [import_compile_caches(blob) for blob in caches]
    with open_engine(module, options, device, request.model.input_shape) as runner:
        for batch in request.batch_sizes:
            runner.infer({INPUT: np.zeros((batch, *request.model.input_shape), dtype=np.float32)})
        extra["compile_seconds"] = {str(b): s for b, s in sorted(runner.setup_seconds.items())}
    extra["compile_caches_given"] = len(caches)
    extra["compile_cache_artifacts_given"] = imported
    blob = export_compile_caches()
    extra["compile_cache_bytes"] = len(blob) if blob else 0
    return blob
