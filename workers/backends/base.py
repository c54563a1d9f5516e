"""The Backend protocol: making an engine and running it are two things.

`build()` turns a variant (ONNX bytes, plus the checkpoint for the PyTorch baseline) into an
Engine for one target; `open()` returns a Runner whose resources live inside `with runner:`,
so nothing leaks when a benchmark throws. Backends import their library only when used:
`import workers` works on a machine that has none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np

from workers.bench import GpuTimer
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
    timing_caches: tuple[bytes, ...] = ()  # datacenter TensorRT: combined into the builder's starting cache


NO_CONTEXT = BuildContext()


class Runner(Protocol):
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def __enter__(self) -> Runner: ...

    def __exit__(self, *exc: object) -> None: ...

    def infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run once and return every output on the host, in manifest order."""
        ...

    def prepare(self, feeds: dict[str, np.ndarray]) -> Callable[[], None]:
        """Bind `feeds` once and return a step that runs one complete inference (copies included)."""
        ...

    def synchronize(self) -> None: ...

    def gpu_timer(self) -> GpuTimer | None: ...


class Backend(Protocol):
    name: ClassVar[str]
    target_kinds: ClassVar[tuple[str, ...]]  # which Target.kind values it can build for
    precisions: ClassVar[tuple[str, ...]]  # which variants it builds

    def availability(self) -> Availability: ...

    def versions(self) -> dict[str, str]:
        """Installed versions under the keys the planner matches targets with (see version_key)."""
        ...

    def build(self, request: BuildRequest, variant: bytes, checkpoint: bytes | None, context: BuildContext = NO_CONTEXT) -> Engine: ...

    def open(self, engine: bytes, manifest: Manifest) -> Runner: ...


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


def version_key(backend: type, target_kind: str) -> str:
    """Which entry of versions() serves a target kind: the backend's name unless it has flavours per kind."""
    return str(getattr(backend, "version_keys", {}).get(target_kind, backend.name))  # type: ignore[attr-defined]


def int8_layout(backend: type, cpu_arch: str, int8_dot_32bit: bool) -> str:
    """The int8 Q/DQ layout a backend builds from on a target (workers.precision.INT8_LAYOUTS):
    the TensorRT one unless the backend says otherwise for the target's CPU."""
    from workers.precision import DEFAULT_LAYOUT

    choose = getattr(backend, "int8_layout", None)
    return str(choose(cpu_arch, int8_dot_32bit)) if choose is not None else DEFAULT_LAYOUT
