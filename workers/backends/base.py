"""The Backend base class: making an engine and running it are two things.

`build()` turns a variant (ONNX bytes, plus the checkpoint for the PyTorch baseline) into an
Engine for one target; `open()` returns a Runner whose resources live inside `with runner:`,
so nothing leaks when a benchmark throws. Every runner subclasses the Runner base here, which
owns activation, the guard against use outside `with`, and the checks of its feeds. Backends
import their library only when used: `import workers` works on a machine that has none of them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy as np

from workers.bench import GpuTimer
from workers.precision import DEFAULT_LAYOUT
from workers.structs import BuildRequest, Engine, Manifest, Target, TensorSpec


class BackendUnavailable(RuntimeError):
    """The backend's library is not installed here, or cannot serve this target."""


@dataclass(frozen=True)
class Availability:
    name: str
    version: str | None  # None when the library is missing
    detail: str  # where it comes from, or how to install it

    @property
    def ok(self) -> bool:
        return self.version is not None


ProgressCallback = Callable[[str, int, int], "bool | None"]  # (phase, steps done, steps in phase); False cancels


@dataclass(frozen=True)
class BuildContext:
    """What a build may use beyond its request; backends ignore what they have no use for."""

    progress: ProgressCallback | None = None
    # What earlier builds on this target left for the next one (see Backend.cache_key): datacenter
    # TensorRT timing caches, or torch.compile's Inductor caches. The build returns an updated one
    # as Engine.builder_cache.
    caches: tuple[bytes, ...] = ()


NO_CONTEXT = BuildContext()


Feeds = Mapping[str, np.ndarray]  # input name -> array on the host
Step = Callable[[], None]  # one complete inference; see Runner.prepare


class Runner(ABC):
    """An opened engine. Resources live inside `with runner:`; what every runner shares lives here, once.

    The base owns activation (as Polygraphy's BaseRunner does): `__enter__` calls `_activate()`
    and `__exit__` always calls `_deactivate()`, also when `_activate()` failed half-way, so a
    subclass allocates as it goes and frees whatever exists, with no try/except of its own.
    The base also refuses use outside `with` and checks feeds against `inputs` before a
    subclass sees them, so a wrong name, dtype or shape is one line that names the tensor
    instead of an error from deep inside ONNX Runtime, TensorRT or CUDA.

    Subclasses implement `_activate`, `_deactivate`, `_infer` and `_prepare`; GPU runners also
    override `synchronize` and `gpu_timer`.
    """

    def __init__(self, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
        self.inputs = inputs
        self.outputs = outputs  # [] where the engine's outputs are known only once it runs
        self.is_active = False
        # The batch sizes the engine was made for, where any other costs a compile or a capture
        # (a compiled PyTorch engine); empty where every size in its profile costs the same.
        self.preferred_batches: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        """How errors name this runner."""
        return type(self).__name__

    def __enter__(self) -> Self:
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    def activate(self) -> None:
        """Open the engine; prefer `with runner:`, which cannot forget to close it."""
        if self.is_active:
            raise RuntimeError(f"{self.name} is already active: leave its `with` before entering it again")
        try:
            self._activate()
        except BaseException as exc:
            # Free what _activate made before it failed; the failure itself is what the caller must see.
            try:
                self._deactivate()
            except Exception as cleanup:
                exc.add_note(f"{self.name}: closing it after the failure also failed: {cleanup!r}")
            raise
        self.is_active = True

    def deactivate(self) -> None:
        try:
            self._deactivate()
        finally:
            self.is_active = False

    def infer(self, feeds: Feeds) -> list[np.ndarray]:
        """Run once and return every output on the host, in manifest order."""
        self._check("infer", feeds)
        return self._infer(feeds)

    def prepare(self, feeds: Feeds, *, data_transfers: bool = True) -> Step:
        """Bind `feeds` once and return a step that runs one complete inference.

        With `data_transfers` (trtexec's default) a step copies the inputs to the device and the
        outputs back; without (trtexec --noDataTransfers) it only runs the engine on inputs
        already on the device. Runners with no device (CPU) have nothing to copy either way.
        """
        self._check("prepare", feeds)
        return self._prepare(feeds, data_transfers)

    def synchronize(self) -> None:
        """Wait for all work a step queued; a no-op where steps run synchronously (CPU)."""
        return None

    def gpu_timer(self) -> GpuTimer | None:
        """Device milliseconds of the last step's compute, read after synchronize(); None without a GPU."""
        return None

    @abstractmethod
    def _activate(self) -> None:
        """Open the engine. May fail half-way: `_deactivate` then frees what was made."""

    @abstractmethod
    def _deactivate(self) -> None:
        """Free everything; safe after a half-failed `_activate` and after a completed one."""

    @abstractmethod
    def _infer(self, feeds: Feeds) -> list[np.ndarray]: ...

    @abstractmethod
    def _prepare(self, feeds: Feeds, data_transfers: bool) -> Step: ...

    def _check(self, call: str, feeds: Feeds) -> None:
        if not self.is_active:
            raise RuntimeError(f"{self.name}.{call}() called outside `with runner:`: the engine is not open")
        check_feeds(self.inputs, feeds, self.name)


def check_feeds(inputs: list[TensorSpec], feeds: Feeds, owner: str) -> None:
    """One-line ValueError unless `feeds` holds exactly `inputs`, each of its dtype, rank and fixed non-batch sizes.

    Axis 0 is the batch and its size is the runner's business (a profile's range, a package's
    range); other axes named by a string (dynamic in the engine) take any size.
    """
    names = [spec.name for spec in inputs]
    expected = ", ".join(repr(name) for name in names) or "none"
    unknown = [name for name in feeds if name not in names]
    if unknown:
        raise ValueError(f"{owner}: no input named {unknown[0]!r}; the engine's inputs: {expected}")
    missing = [name for name in names if name not in feeds]
    if missing:
        raise ValueError(f"{owner}: input {missing[0]!r} is missing; the engine's inputs: {expected}")
    for spec in inputs:
        array = feeds[spec.name]
        if str(array.dtype) != spec.dtype:
            raise ValueError(f"{owner}: input {spec.name!r} is {array.dtype}; the engine takes {spec.dtype}")
        shape, wanted = tuple(array.shape), tuple(spec.shape)
        if len(shape) != len(wanted):
            raise ValueError(f"{owner}: input {spec.name!r} has shape {shape}, {len(shape)} axes; the engine takes {wanted}")
        for axis, size in enumerate(wanted[1:], start=1):
            if isinstance(size, int) and shape[axis] != size:
                raise ValueError(f"{owner}: input {spec.name!r} has shape {shape}: axis {axis} must be {size} (the engine takes {wanted})")


class Backend(ABC):
    """A library that makes engines and runs them; the planner asks its class, a worker its instance.

    What a backend must say: `name`, `target_kinds`, `precisions`, and how to `build` and `open`.
    Everything else has a default here that fits a backend building from an ONNX variant with
    nothing to share between builds; a backend overrides the hooks it differs in, and the planner
    and the driver call them on every backend alike.
    """

    name: ClassVar[str]
    target_kinds: ClassVar[tuple[str, ...]]  # which Target.kind values it can build for
    precisions: ClassVar[tuple[str, ...]]  # which variants it builds
    # What a build starts from: "onnx" (the variant's ONNX) or "checkpoint" (the export's weights, cast by the backend).
    consumes: ClassVar[str] = "onnx"
    # Whether an engine is made for its batch sizes (a profile, a compile per size): then they belong in the build key.
    batch_profile: ClassVar[bool] = False
    # The key of versions() each target kind needs, where it differs from the backend's name (flavours per kind).
    version_keys: ClassVar[dict[str, str]] = {}

    @abstractmethod
    def availability(self) -> Availability: ...

    def versions(self) -> dict[str, str]:
        """Installed versions under the keys the planner matches targets with (see version_key)."""
        version = self.availability().version
        return {self.name: version} if version else {}

    @abstractmethod
    def build(self, request: BuildRequest, variant: bytes, checkpoint: bytes | None, context: BuildContext = NO_CONTEXT) -> Engine: ...

    @abstractmethod
    def open(self, engine: bytes, manifest: Manifest, caches: tuple[bytes, ...] = ()) -> Runner:
        """A runner for a built engine; `caches` are the builder caches its manifest names (a compiled
        engine compiles again where it runs, and starts warm from them)."""

    @classmethod
    def version_key(cls, target_kind: str) -> str:
        """Which entry of versions() serves a target kind: the backend's name unless it has flavours per kind."""
        return cls.version_keys.get(target_kind, cls.name)

    @staticmethod
    def applies(options: dict[str, Any], precision: str, target_kind: str) -> dict[str, Any] | None:
        """The options a build of `precision` on `target_kind` really uses, or None where it cannot run; all of them by default."""
        return options

    @staticmethod
    def int8_layout(cpu_arch: str, int8_dot_32bit: bool) -> str:
        """The int8 Q/DQ layout it builds from on a target's CPU (workers.precision.INT8_LAYOUTS): TensorRT's by default."""
        return DEFAULT_LAYOUT

    @staticmethod
    def cache_key(request: BuildRequest, backend_version: str) -> str | None:
        """Which builder caches a build shares with earlier builds on its target; None (the default) for none.

        A backend whose builds learn something reusable (TensorRT's tactic timings, Inductor's
        generated kernels and autotuning) returns a key; the driver keeps the caches per
        (target, key) and hands them to the next build.
        """
        return None


def random_feeds(inputs: list[TensorSpec], batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for timing: the engine's own shapes with the batch axis set, filled with noise."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, Any] = {}
    for spec in inputs:
        shape = [batch_size if i == 0 else int(d) for i, d in enumerate(spec.shape)]
        feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    return feeds


def supports(backend: Backend, target: Target) -> bool:
    return target.kind in backend.target_kinds


def version_key(backend: type[Backend], target_kind: str) -> str:
    """Backend.version_key for callers that hold the class in a variable (farm.cli.terminal)."""
    return backend.version_key(target_kind)


def cache_key(backend: type[Backend], request: BuildRequest, backend_version: str) -> str | None:
    """Backend.cache_key for callers that hold the class in a variable (farm.run.stages)."""
    return backend.cache_key(request, backend_version)
