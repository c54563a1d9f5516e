"""The PyTorch baseline: the eager module the seed article compared against.

Its "engine" is the exported checkpoint itself (the very weights the ONNX variants carry), so
every speedup in a winners table is measured against the same numbers. On a GPU the
compute is timed with CUDA events, apart from the host-device copies.
"""

from __future__ import annotations

import io
import time
from dataclasses import asdict
from importlib import metadata
from typing import Any, ClassVar

import numpy as np

from workers.backends.base import NO_CONTEXT, Availability, BackendUnavailable, BuildContext, Feeds, Runner, Step
from workers.bench import GpuTimer
from workers.models import BATCH_AXIS, load_module
from workers.structs import BuildRequest, Engine, Manifest, ModelRef, TensorSpec

MODES = ("eager",)


class TorchBackend:
    name: ClassVar[str] = "torch"
    target_kinds: ClassVar[tuple[str, ...]] = ("cpu", "gpu")
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)  # the PyTorch baseline is the fp32 model

    def availability(self) -> Availability:
        try:
            version = metadata.version("torch")
        except metadata.PackageNotFoundError:
            return Availability(self.name, None, "pip install torch")
        return Availability(self.name, version, "eager")

    def versions(self) -> dict[str, str]:
        version = self.availability().version
        return {self.name: version} if version else {}

    def build(self, request: BuildRequest, variant: bytes, checkpoint: bytes | None, context: BuildContext = NO_CONTEXT) -> Engine:
        if checkpoint is None:
            raise BackendUnavailable(f"model {request.model.name}: an ONNX-file source has no PyTorch module to run")
        if request.precision not in ("fp32", "fp16"):
            raise BackendUnavailable(f"torch backend runs fp32 and fp16, not {request.precision}")
        mode = request.options.get("mode", "eager")
        if mode not in MODES:
            raise ValueError(f"torch mode {mode!r}: expected one of {', '.join(MODES)}")
        import torch

        started = time.perf_counter()
        module = load_module(request.model)  # proves the checkpoint loads into the module
        module.load_state_dict(torch.load(io.BytesIO(checkpoint), weights_only=True))
        manifest = Manifest(
            backend=self.name,
            backend_version=torch.__version__,
            target=request.target.id,
            precision=request.precision,
            options=dict(request.options),
            inputs=[TensorSpec("input", (BATCH_AXIS, *request.model.input_shape), "float32")],
            outputs=[],
            model=request.model.name,
            variant_sha256="",
            extra={"model_ref": asdict(request.model), "device": "cuda" if request.target.kind == "gpu" else "cpu"},
        )
        return Engine(data=checkpoint, manifest=manifest, seconds=time.perf_counter() - started)

    def open(self, engine: bytes, manifest: Manifest) -> TorchRunner:
        return TorchRunner(engine, manifest)


class TorchRunner(Runner):
    """The eager module on the CPU or one GPU; on a GPU, CUDA events bracket the forward alone."""

    def __init__(self, engine: bytes, manifest: Manifest) -> None:
        super().__init__(manifest.inputs, manifest.outputs)
        self._engine = engine
        self._manifest = manifest
        self._module: Any = None
        self._device = manifest.extra.get("device", "cpu")
        self._events: tuple[Any, Any] | None = None

    def _activate(self) -> None:
        import torch

        if self._device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable("torch: this engine targets a GPU but CUDA is not available here")
        ref = dict(self._manifest.extra["model_ref"])
        ref["input_shape"] = tuple(ref["input_shape"])
        module = load_module(ModelRef(**ref))
        module.load_state_dict(torch.load(io.BytesIO(self._engine), weights_only=True))
        dtype = torch.float16 if self._manifest.precision == "fp16" else torch.float32
        self._module = module.to(self._device, dtype)
        if self._device == "cuda":
            self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))  # type: ignore[no-untyped-call]

    def _deactivate(self) -> None:
        self._module = None
        self._events = None
        import torch

        if self._device == "cuda":
            torch.cuda.empty_cache()  # a no-op where CUDA never initialised (activation failed before it)

    def _host(self, feeds: Feeds) -> Any:
        import torch

        return torch.from_numpy(np.ascontiguousarray(feeds[self.inputs[0].name]))

    def _to_device(self, host: Any) -> Any:
        return host.to(self._device, non_blocking=True).to(next(self._module.parameters()).dtype)

    def _compute(self, x: Any) -> list[Any]:
        """The forward alone, between the events: every output tensor, still on the device."""
        import torch

        if self._events:
            self._events[0].record()
        out = self._module(x)
        if self._events:
            self._events[1].record()
        if isinstance(out, list | tuple) and out and isinstance(out[0], dict):
            out = list(out[0].values())  # a torchvision detector, one image: boxes, labels, scores
        return [out] if isinstance(out, torch.Tensor) else list(out)

    def _forward(self, host: Any) -> list[np.ndarray]:
        import torch

        with torch.inference_mode():
            outs = self._compute(self._to_device(host))
            return [(o.float() if o.is_floating_point() else o).cpu().numpy() for o in outs]

    def _infer(self, feeds: Feeds) -> list[np.ndarray]:
        return self._forward(self._host(feeds))

    def _prepare(self, feeds: Feeds, data_transfers: bool) -> Step:
        import torch

        host = self._host(feeds)
        if self._device == "cuda":
            host = host.pin_memory()
        if data_transfers:

            def step() -> None:
                self._forward(host)

            return step
        with torch.inference_mode():
            device_input = self._to_device(host)

        def run_only() -> None:
            with torch.inference_mode():
                self._compute(device_input)

        return run_only

    def synchronize(self) -> None:
        if self._device == "cuda":
            import torch

            torch.cuda.synchronize()

    def gpu_timer(self) -> GpuTimer | None:
        if self._events is None:
            return None
        start, end = self._events
        return lambda: float(start.elapsed_time(end))
