"""AOTInductor packages: a module compiled ahead of time into one .pt2 that runs without its Python code.

build_aoti_package exports the prepared module with a dynamic batch axis and compiles it with
Inductor. The package carries its own settings (engine options, batch range, input shape) as
AOTInductor metadata, readable without loading it, so a loader needs nothing but the bytes.

Loading is native code, and it can kill the process: aoti_load_package segfaulted on the
H200 with torch 2.11. check_aoti_package therefore loads and runs a package in a
fresh interpreter first; `python -m workers.backends.torch.aoti_child PACKAGE --device DEVICE`
is that interpreter's entry point.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from workers.backends.torch.engines import Compute, TorchEngineRunner, flatten_outputs, prepare_module, torch_dtype
from workers.backends.torch.options import TorchEngineOptions, device_type
from workers.memory import PeakMemory

if TYPE_CHECKING:
    import torch

META_OPTIONS = "farm.options"  # JSON of TorchEngineOptions
META_BATCH = "farm.batch"  # "min,max"
META_INPUT_SHAPE = "farm.input_shape"  # one sample, without the batch axis: "3,224,224"
META_DEVICE = "farm.device"  # "cpu" | "cuda"
META_TORCH = "farm.torch"
# check_aoti_package's child: a module of its own, which the package's __init__ never imports, so
# `python -m` finds it unimported (runpy warns when the module it runs was imported already).
CHILD = "workers.backends.torch.aoti_child"
REPO_ROOT = Path(__file__).resolve().parents[3]  # above workers/backends/torch/
T = TypeVar("T")


@dataclass(frozen=True)
class AotiPackage:
    data: bytes  # the .pt2 file
    batch_min: int
    batch_max: int
    export_seconds: float  # torch.export
    compile_seconds: float  # aoti_compile_and_package: Inductor codegen and the C++ / CUDA compile
    peak_rss_bytes: int  # this process, sampled during export and compile
    peak_children_rss_bytes: int  # the compiler processes Inductor started, summed, at their peak
    metadata: dict[str, str]

    @property
    def size_bytes(self) -> int:
        return len(self.data)


def _batch_axis_range(program: Any) -> tuple[int, int]:
    """The batch range torch.export actually kept for the first user input (it may narrow what was asked)."""
    import torch

    names = set(program.graph_signature.user_inputs)
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name in names)
    batch = node.meta["val"].shape[0]
    if not isinstance(batch, torch.SymInt):
        return int(batch), int(batch)
    bounds = program.range_constraints[batch.node.expr]
    return int(bounds.lower), int(bounds.upper)


def build_aoti_package(
    module: torch.nn.Module,
    input_shape: tuple[int, ...],
    batch_sizes: tuple[int, ...] | list[int],
    options: TorchEngineOptions,
    device: str,
    inductor_configs: dict[str, Any] | None = None,
) -> AotiPackage:
    """Export `module` (prepared here, in place) for batches min..max of `batch_sizes` and compile it to a .pt2.

    torch.export specialises a dimension whose example size is 0 or 1, so the example input
    has batch max(2, min): a batch-1 example would bake batch 1 into the package. The range
    itself may start at 1. A single batch size gives a static package.
    """
    import torch

    if options.kind != "aoti":
        raise ValueError(f"build_aoti_package builds kind aoti, not {options.kind}")
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise ValueError(f"batch_sizes {list(batch_sizes)!r}: expected one or more sizes of at least 1")
    low, high = min(batch_sizes), max(batch_sizes)
    module = prepare_module(module, options, device)
    example_batch = low if low == high else max(2, low)
    example = torch.randn(example_batch, *input_shape, device=device).to(torch_dtype(options.precision))
    if options.channels_last and example.dim() == 4:
        example = example.contiguous(memory_format=torch.channels_last)
    dynamic = None if low == high else ({0: torch.export.Dim("batch", min=low, max=high)},)
    metadata = {
        META_OPTIONS: json.dumps(options.to_dict(), sort_keys=True),
        META_BATCH: f"{low},{high}",
        META_INPUT_SHAPE: ",".join(str(d) for d in input_shape),
        META_DEVICE: device_type(device),
        META_TORCH: str(torch.__version__),
    }
    configs = dict(inductor_configs or {}) | {"aot_inductor.metadata": metadata}
    # no_grad as AOTInductor's own tutorial does: an inference graph, with no autograd state to save
    with PeakMemory(0.05, children=True) as memory, tempfile.TemporaryDirectory(prefix="farm-aoti-") as folder, torch.no_grad():
        started = time.perf_counter()
        program = torch.export.export(module, (example,), dynamic_shapes=dynamic)
        exported = time.perf_counter()
        kept = _batch_axis_range(program)
        if kept[0] > low or kept[1] < high:
            raise ValueError(f"torch.export kept batch {kept[0]}..{kept[1]} of the {low}..{high} asked for")
        path = torch._inductor.aoti_compile_and_package(program, package_path=os.path.join(folder, "model.pt2"), inductor_configs=configs)
        data = Path(path).read_bytes()
        compiled = time.perf_counter()
    return AotiPackage(
        data=data, batch_min=low, batch_max=high, export_seconds=exported - started, compile_seconds=compiled - exported,
        peak_rss_bytes=memory.peak_bytes, peak_children_rss_bytes=memory.peak_children_bytes, metadata=metadata,
    )


def read_package_metadata(data: bytes) -> dict[str, str]:
    """The AOTInductor metadata of a .pt2 without loading its native code ({} when there is none)."""
    import io

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = sorted(n for n in archive.namelist() if n.endswith("_metadata.json") and "/aotinductor/" in n)
            names.sort(key=lambda n: not n.endswith("wrapper_metadata.json"))  # the model's own entry first
            return {str(k): str(v) for k, v in json.loads(archive.read(names[0])).items()} if names else {}
    except zipfile.BadZipFile as exc:
        raise ValueError(f"not an AOTInductor package (.pt2 is a zip archive): {exc}") from None


def load_aoti_package(data: bytes, device: str) -> Any:
    """Load a .pt2 into this process: a callable taking and returning tensors on `device`.

    The loader unpacks the archive into its own folder while loading, so the temporary file
    is gone when this returns.
    """
    import torch

    index = torch.device(device).index
    with tempfile.NamedTemporaryFile(prefix="farm-aoti-", suffix=".pt2") as handle:
        handle.write(data)
        handle.flush()
        return torch._inductor.aoti_load_package(handle.name, device_index=-1 if index is None else index)


def _given_or_packed(what: str, given: T | None, packed: T | None, show: Callable[[T], str]) -> T:
    """What the caller gave, where the package says the same or nothing; else the package's own."""
    if given is None:
        if packed is None:
            raise ValueError(f"this .pt2 carries no farm {what} (not built by build_aoti_package): pass {what}")
        return packed
    if packed is not None and packed != given:
        verb = "differ" if what.endswith("s") else "differs"
        raise ValueError(f"{what} {show(given)} {verb} from the package's own: {show(packed)}")
    return given


class AotiRunner(TorchEngineRunner):
    """Runs an AOTInductor package; its options, input shape and batch range come from the package itself."""

    kind = "aoti"

    def __init__(
        self, data: bytes, device: str, options: TorchEngineOptions | None = None, input_shape: tuple[int, ...] | None = None
    ) -> None:
        metadata = read_package_metadata(data)
        packed = TorchEngineOptions.from_dict(json.loads(metadata[META_OPTIONS])) if META_OPTIONS in metadata else None
        options = _given_or_packed("options", options, packed, lambda o: o.label)
        text = metadata.get(META_INPUT_SHAPE)
        packed_shape = tuple(int(d) for d in text.split(",")) if text else None
        input_shape = _given_or_packed("input_shape", None if input_shape is None else tuple(input_shape), packed_shape, str)
        built_for = metadata.get(META_DEVICE)
        if built_for and built_for != device_type(device):
            raise ValueError(f"this aoti package was built for {built_for} and cannot run on {device}")
        super().__init__(options, device, input_shape)
        self.data = data
        self.metadata = metadata
        low, _, high = metadata.get(META_BATCH, "").partition(",")
        self.batch_range: tuple[int, int] | None = (int(low), int(high)) if high else None
        self._model: Any = None

    def _activate(self) -> None:
        super()._activate()
        self._model = load_aoti_package(self.data, self.device)

    def _deactivate(self) -> None:
        self._model = None
        super()._deactivate()

    def _compute(self, device_input: torch.Tensor) -> Compute:
        import torch

        batch = int(device_input.shape[0])
        if self.batch_range and not self.batch_range[0] <= batch <= self.batch_range[1]:
            # AOTInductor does not check: out of range it runs and may return garbage
            raise ValueError(f"batch {batch}: this aoti package runs batch {self.batch_range[0]}..{self.batch_range[1]}")
        model = self._model

        def compute() -> list[torch.Tensor]:
            with torch.inference_mode():
                return flatten_outputs(model(device_input))

        compute()
        return compute


@dataclass
class AotiCheck:
    ok: bool
    returncode: int
    seconds: float
    detail: str  # how it failed: the signal, or the end of the child's stderr
    outputs: list[list[np.ndarray]] | None = None  # per input given, the package's outputs
    setup_seconds: dict[int, float] | None = None  # the child's first call per batch size


def check_aoti_package(
    data: bytes, device: str, inputs: list[np.ndarray] | None = None, timeout_s: float = 600.0
) -> AotiCheck:
    """Load and run a package in a fresh interpreter that imports only `workers` and torch.

    Without `inputs` it runs zeros at the package's smallest and largest batch. A crash (the
    torch 2.11 segfault) comes back as ok=False with the signal named, not as a dead caller.
    """
    with tempfile.TemporaryDirectory(prefix="farm-aoti-check-") as folder:
        package = Path(folder, "model.pt2")
        package.write_bytes(data)
        command = [sys.executable, "-m", CHILD, str(package), "--device", device]
        if inputs is not None:
            np.savez(Path(folder, "inputs.npz"), *inputs)
            command += ["--inputs", str(Path(folder, "inputs.npz")), "--outputs", str(Path(folder, "outputs.npz"))]
        # this checkout's workers, whatever else is installed; the cwd is empty, so nothing else leaks in
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
        started = time.perf_counter()
        try:
            done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return AotiCheck(False, -1, time.perf_counter() - started, f"no answer within {timeout_s:.0f} s")
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            how = f"killed by {signal.Signals(-done.returncode).name}" if done.returncode < 0 else f"exit {done.returncode}"
            return AotiCheck(False, done.returncode, seconds, f"{how}: {done.stderr[-2000:]}")
        report = json.loads(done.stdout.strip().splitlines()[-1])
        outputs = None
        if inputs is not None:
            with np.load(Path(folder, "outputs.npz")) as archive:
                outputs = [[archive[f"{i}_{j}"] for j in range(count)] for i, count in enumerate(report["outputs_per_input"])]
        setup = {int(k): float(v) for k, v in report["setup_seconds"].items()}
        return AotiCheck(True, 0, seconds, "", outputs, setup)

