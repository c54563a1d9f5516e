"""Backends by name. Each imports its library only when it builds or runs."""

from __future__ import annotations

from workers.backends.base import Availability, Backend, BackendUnavailable, BuildContext, Runner, random_feeds, supports
from workers.backends.onnxruntime import OnnxRuntimeBackend
from workers.backends.tensorrt import TensorRTBackend
from workers.backends.torch import TorchBackend

BACKENDS: dict[str, type[Backend]] = {
    OnnxRuntimeBackend.name: OnnxRuntimeBackend,
    TorchBackend.name: TorchBackend,
    TensorRTBackend.name: TensorRTBackend,
}


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]()
    except KeyError:
        raise BackendUnavailable(f"unknown backend {name!r}; known: {', '.join(sorted(BACKENDS))}") from None


__all__ = ["Availability", "Backend", "BackendUnavailable", "BuildContext", "Runner", "get_backend", "random_feeds", "supports", "BACKENDS"]
