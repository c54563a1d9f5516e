"""TensorRTRunner: a plan on the local GPU through cuda-python (workers.cuda), either flavour."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from workers import cuda
from workers.backends.base import BackendUnavailable, Feeds, Runner, Step
from workers.backends.tensorrt.build import BuildLog, _collected_outside_callbacks, _dims, _listeners, _numpy_dtype
from workers.backends.tensorrt.options import import_flavour, plan_flavour
from workers.bench import GpuTimer
from workers.structs import Manifest

if TYPE_CHECKING:
    import tensorrt as trt


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


class TensorRTRunner(Runner):
    """Runs a plan on the local GPU: pinned host and device buffers per tensor, one stream, events around the engine.

    A step is copy in, execute, copy out (execute alone with `data_transfers=False`); the events
    bracket only the execute (or its CUDA graph replay when the build's options say
    `cuda_graph: true`), so `gpu_timer()` reads the engine's compute time apart from the copies.
    """

    def __init__(self, plan: bytes, manifest: Manifest) -> None:
        super().__init__(manifest.inputs, manifest.outputs)
        self._plan = plan
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

    def _activate(self) -> None:
        # Each resource is kept as soon as it exists: when a later one fails, _deactivate frees it.
        module = self._module = import_flavour(self._flavour)
        if TYPE_CHECKING:
            import tensorrt as trt
        else:
            trt = module
        logger, _ = _listeners(module, self._record, "warning", None)
        # deserialize and create_execution_context log through `logger`; the steps (execute_async_v3) run outside
        # the guard, since a collection per step would distort the timings and the guard's own collect ran here.
        with _collected_outside_callbacks():
            runtime = trt.Runtime(logger)
            self._keep = (logger, runtime)
            engine = self._engine = runtime.deserialize_cuda_engine(self._plan)
            if engine is None:
                reason = "; ".join(self._record.errors()) or "no error was logged"
                raise BackendUnavailable(f"TensorRT ({self._flavour}) {module.__version__} cannot load this engine here: {reason}")
            names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
            expected = {spec.name for spec in (*self.inputs, *self.outputs)}
            if names != expected:
                raise ValueError(f"engine tensors {sorted(names)} do not match the manifest's {sorted(expected)}")
            stack = self._stack = ExitStack()
            self._stream = stack.enter_context(cuda.Stream())
            self._events = (stack.enter_context(cuda.Event()), stack.enter_context(cuda.Event()))
            self._context = engine.create_execution_context()
            if self._context is None:
                raise RuntimeError(f"TensorRT could not create an execution context: {'; '.join(self._record.errors())}")

    def _deactivate(self) -> None:
        try:
            if self._stream is not None:
                self._stream.synchronize()
        finally:
            self._drop_graph()
            self._context = None
            self._engine = None
            for binding in self._bindings.values():
                binding.close()
            self._bindings, self._outputs = {}, []
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

    def _prepare(self, feeds: Feeds, data_transfers: bool) -> Step:
        context, engine, stream, events = self._context, self._engine, self._stream, self._events
        # the base calls _prepare only while active, and _activate leaves none of these None
        assert context is not None and engine is not None and stream is not None and events is not None
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
        self._outputs = outputs

        def copy_inputs() -> None:
            for binding in inputs:
                cuda.copy_to_device(binding.device, binding.host, binding.nbytes, stream)

        if not data_transfers:  # the inputs go to the device once, here; the outputs stay there
            copy_inputs()
            stream.synchronize()

            def run_only() -> None:
                start.record(stream)
                run()
                end.record(stream)

            return run_only

        def step() -> None:
            copy_inputs()
            start.record(stream)
            run()
            end.record(stream)
            for binding in outputs:
                cuda.copy_to_host(binding.host, binding.device, binding.nbytes, stream)

        return step

    def _infer(self, feeds: Feeds) -> list[np.ndarray]:
        step = self._prepare(feeds, data_transfers=True)
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
