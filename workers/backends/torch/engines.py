"""PyTorch engine kinds that run a module: eager, CUDA graph replay and torch.compile.

An engine here is a module prepared for one precision and memory format, opened as a runner
that times it the way trtexec times TensorRT: the input is bound once; a step copies it to the
device, runs, and copies the outputs back (or, with `data_transfers=False`, only runs); CUDA
events bracket the compute alone. The same code runs on a CPU (no events, no copies) so CI
exercises it. TorchEngineRunner is the base every kind shares, AotiRunner included.

Beside it in workers.backends.torch: `options` (what an engine is made of), `aoti`
(AOTInductor packages: build, load, check in a fresh process), `kinds` (which runner serves
which kind: open_engine), `compile_cache` (torch.compile's caches as a portable blob) and
`quant` (torchao); workers.device.gpu_clocks reads SM clocks before and after a benchmark.

torch is imported inside functions: `import workers` must work on a machine without it.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from workers.backends.base import Feeds, Runner, Step
from workers.backends.torch.options import PRECISIONS, TorchEngineOptions, device_type, one_of
from workers.backends.torch.quant import quantize_module
from workers.bench import GpuTimer
from workers.models import BATCH_AXIS
from workers.structs import TensorSpec

if TYPE_CHECKING:
    import torch

CUDA_GRAPH_WARMUP_ITERATIONS = 3  # PyTorch's CUDA graph notes warm up a few iterations on a side stream
COMPILE_WARMUP_CALLS = 3  # cudagraph trees warm up on call 1, record on call 2, replay from call 3
RECOMPILE_LIMIT = 64  # dynamo's default (8) silently falls back to eager after 8 shapes of one forward
INPUT = "input"  # the input's name in every runner's feeds: the name workers.models exports it under


def torch_dtype(precision: str) -> torch.dtype:
    import torch

    one_of("precision", precision, PRECISIONS)
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def apply_backend_flags(options: TorchEngineOptions, device: str) -> None:
    """Set the process-wide cuDNN / cuBLAS flags an engine was made with.

    They are global, so each runner sets them again on entry: otherwise the last engine
    prepared decides how an earlier one runs.
    """
    if device_type(device) != "cuda":
        return
    import torch

    torch.backends.cuda.matmul.allow_tf32 = options.tf32
    torch.backends.cudnn.allow_tf32 = options.tf32
    torch.backends.cudnn.benchmark = options.cudnn_benchmark


def prepare_module(module: torch.nn.Module, options: TorchEngineOptions, device: str) -> torch.nn.Module:
    """Eval mode, the engine's dtype and memory format on `device`, and the backend flags.

    nn.Module.to() works in place: pass a copy to keep an fp32 original (a cast back from
    fp16 does not restore the lost bits). Prepare a module once: `quantize` (torchao) replaces
    its linear weights, and quantizing twice is an error.
    """
    import torch

    options.check_device(device)
    apply_backend_flags(options, device)
    module = module.eval().to(device=device, dtype=torch_dtype(options.precision))
    if options.channels_last:
        module = module.to(memory_format=torch.channels_last)  # only 4-D parameters change
    if options.quantize is not None:
        module = quantize_module(module, options.quantize, device)
    return module


def flatten_outputs(out: Any) -> list[torch.Tensor]:
    """A forward's tensors in order: a tensor, or nested tuples / lists / dicts of them."""
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        return [t for value in out.values() for t in flatten_outputs(value)]
    if isinstance(out, list | tuple):
        return [t for value in out for t in flatten_outputs(value)]
    raise TypeError(f"a forward returned {type(out).__name__}, not tensors")


Compute = Callable[[], list["torch.Tensor"]]


@dataclass
class _Binding:
    device_input: torch.Tensor  # where a step's input lives on the device (a CUDA graph's static input)
    compute: Compute  # one forward over device_input, returning its outputs on the device


class TorchEngineRunner(Runner):
    """Runs one engine on one device at any batch size; resources live inside `with runner:`.

    The feed is one float32 array named "input", shaped (batch, *input_shape) as the ONNX
    export names it; the runner casts it to the engine's precision and memory format. Each
    input shape is bound once (buffer, compile or graph capture); `setup_seconds[batch]` keeps
    what that cost: the compile for kind compile, warm-up + capture for cuda_graph, the first
    call (cuDNN autotuning) for eager and aoti.

    Each kind adds to `_activate` / `_deactivate` (through super()) what it opens and closes,
    and `_compute`: one forward over a bound device buffer.
    """

    kind: ClassVar[str]

    def __init__(self, options: TorchEngineOptions, device: str, input_shape: tuple[int, ...]) -> None:
        if options.kind != self.kind:
            raise ValueError(f"a {type(self).__name__} runs kind {self.kind}, not {options.kind}")
        options.check_device(device)
        super().__init__([TensorSpec(INPUT, (BATCH_AXIS, *input_shape), "float32")], [])
        self.options = options
        self.device = device
        self.is_cuda = device_type(device) == "cuda"
        self.setup_seconds: dict[int, float] = {}
        self._bindings: dict[tuple[int, ...], _Binding] = {}
        self._events: tuple[Any, Any] | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's shape, without the batch axis."""
        return tuple(int(d) for d in self.inputs[0].shape[1:])

    def _activate(self) -> None:
        import torch

        if self.is_cuda and not torch.cuda.is_available():
            raise RuntimeError(f"device {self.device}: CUDA is not available here")
        apply_backend_flags(self.options, self.device)
        if self.is_cuda:
            self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))  # type: ignore[no-untyped-call]

    def _deactivate(self) -> None:
        self._bindings.clear()
        if self._events is not None:  # CUDA is up: wait for the last steps before their memory goes back
            import torch

            self._events = None
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()

    @abstractmethod
    def _compute(self, device_input: torch.Tensor) -> Compute:
        """Set up a forward over `device_input` for its shape (autotune, capture or compile) and return it.

        The returned callable runs one forward and returns the outputs on the device.
        """

    def _host_tensor(self, feeds: Feeds) -> torch.Tensor:
        """The input in the engine's dtype and memory format, in pinned memory on a CUDA host."""
        import torch

        x = feeds[INPUT]
        host = torch.from_numpy(np.ascontiguousarray(x)).to(torch_dtype(self.options.precision))
        if self.options.channels_last and host.dim() == 4:
            host = host.contiguous(memory_format=torch.channels_last)
        if self.is_cuda:
            # empty_strided keeps the NHWC strides, so the copy to the device is one plain memcpy
            pinned = torch.empty_strided(host.size(), host.stride(), dtype=host.dtype, pin_memory=True)
            host = pinned.copy_(host)
        return host

    def _bind(self, host: torch.Tensor) -> _Binding:
        import torch

        shape = tuple(host.shape)
        binding = self._bindings.get(shape)
        if binding is None:
            # created outside inference_mode: copy_() into an inference tensor would be refused later
            device_input = torch.empty_strided(host.size(), host.stride(), dtype=host.dtype, device=self.device)
            device_input.copy_(host)
            started = time.perf_counter()
            binding = _Binding(device_input, self._compute(device_input))
            self.synchronize()
            self.setup_seconds[shape[0]] = time.perf_counter() - started
            self._bindings[shape] = binding
        return binding

    def _infer(self, feeds: Feeds) -> list[np.ndarray]:
        """One forward; every output on the host as float32 (integer outputs keep their type)."""
        host = self._host_tensor(feeds)
        binding = self._bind(host)
        binding.device_input.copy_(host)
        outputs = binding.compute()
        # copies: a CUDA graph's or cudagraph tree's outputs are overwritten by the next replay
        return [np.array((o.float() if o.is_floating_point() else o).cpu().numpy(), copy=True) for o in outputs]

    def _prepare(self, feeds: Feeds, data_transfers: bool) -> Step:
        """On CUDA, with `data_transfers` the step copies the pinned input to the device and the
        outputs back (trtexec's default); without, it only runs (trtexec --noDataTransfers).
        Either way the events bracket the forward alone.
        """
        import torch

        host = self._host_tensor(feeds)
        binding = self._bind(host)
        device_input, compute = binding.device_input, binding.compute
        device_input.copy_(host)
        if not self.is_cuda or self._events is None:

            def run_on_cpu() -> None:
                compute()

            return run_on_cpu
        start, end = self._events
        if not data_transfers:

            def run_only() -> None:
                start.record()
                compute()
                end.record()

            return run_only
        host_outputs = [torch.empty(o.shape, dtype=o.dtype, pin_memory=True) for o in compute()]

        def step() -> None:
            device_input.copy_(host, non_blocking=True)
            start.record()
            outputs = compute()
            end.record()
            for target, output in zip(host_outputs, outputs, strict=True):
                target.copy_(output, non_blocking=True)

        return step

    def synchronize(self) -> None:
        if self.is_cuda:
            import torch

            torch.cuda.synchronize(self.device)

    def gpu_timer(self) -> GpuTimer | None:
        """Device milliseconds between the last step's events; read after synchronize(). None on a CPU."""
        if self._events is None:
            return None
        start, end = self._events
        return lambda: float(start.elapsed_time(end))


class ModuleRunner(TorchEngineRunner):
    """A runner over a torch.nn.Module already prepared for its options (open_engine does that)."""

    def __init__(self, module: torch.nn.Module, options: TorchEngineOptions, device: str, input_shape: tuple[int, ...]) -> None:
        super().__init__(options, device, input_shape)
        self.module = module


class EagerRunner(ModuleRunner):
    kind = "eager"

    def _compute(self, device_input: torch.Tensor) -> Compute:
        import torch

        module = self.module

        def compute() -> list[torch.Tensor]:
            with torch.inference_mode():
                return flatten_outputs(module(device_input))

        compute()  # the first call picks cuDNN algorithms for this shape
        return compute


class CudaGraphRunner(ModuleRunner):
    """One CUDA graph per input shape, captured on first use and replayed for every step."""

    kind = "cuda_graph"
    _graphs: list[Any]  # every captured graph, alive while the runner is open

    def _activate(self) -> None:
        super()._activate()
        self._graphs = []

    def _deactivate(self) -> None:
        self._graphs = []
        super()._deactivate()

    def _compute(self, device_input: torch.Tensor) -> Compute:
        import torch

        module = self.module
        side = torch.cuda.Stream(device=self.device)  # type: ignore[no-untyped-call]
        # Warm-up runs off the capturing stream (PyTorch's CUDA graph notes): cuDNN autotuning
        # and lazy initialisation must not be captured.
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(CUDA_GRAPH_WARMUP_ITERATIONS):
                module(device_input)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # A private memory pool per graph: graphs sharing one may overwrite each other's outputs
        # unless they replay in capture order, and a benchmark replays them in any order.
        with torch.cuda.graph(graph), torch.inference_mode():
            static_outputs = flatten_outputs(module(device_input))
        self._graphs.append(graph)

        def replay() -> list[torch.Tensor]:
            graph.replay()
            return static_outputs

        return replay


class CompileRunner(ModuleRunner):
    """torch.compile with static shapes: one compile per input shape, on its first call."""

    kind = "compile"
    _compiled: Any = None  # the compiled module, while the runner is open

    def _activate(self) -> None:
        import torch

        super()._activate()
        config = torch._dynamo.config
        name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # renamed in torch 2.6
        setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))
        if self.options.coordinate_descent is not None:
            self._compiled = torch.compile(self.module, options=self.options.inductor_options(), dynamic=False)
        else:  # the mode by name, as every build before these options compiled it
            self._compiled = torch.compile(self.module, mode=self.options.mode, dynamic=False)

    def _deactivate(self) -> None:
        self._compiled = None
        super()._deactivate()

    def _compute(self, device_input: torch.Tensor) -> Compute:
        import torch

        compiled = self._compiled
        # reduce-overhead and max-autotune replay CUDA graphs (cudagraph trees); marking each
        # step lets a replay reuse the previous step's output memory, as an inference loop does.
        mark_step = self.is_cuda and self.options.uses_cudagraphs

        def compute() -> list[torch.Tensor]:
            if mark_step:
                torch.compiler.cudagraph_mark_step_begin()  # type: ignore[no-untyped-call]
            with torch.inference_mode():
                return flatten_outputs(compiled(device_input))

        # the first call compiles (Dynamo reads freezing as it traces); later ones record the graph
        with torch._inductor.config.patch(self.options.inductor_config):
            for _ in range(COMPILE_WARMUP_CALLS):
                compute()
        return compute

