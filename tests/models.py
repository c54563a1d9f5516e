"""Small model factories for tests, named in specs as `tests.models:NAME`."""

from __future__ import annotations

import time
from pathlib import Path

from torch import nn


def tiny_cnn() -> nn.Module:
    """A four-layer classifier over 3x32x32 inputs: fast to export, build and time."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 10),
    )


def not_a_module() -> str:
    return "not a module"



def crashes_when_built() -> nn.Module:
    """Exports fine, then kills the process (a real segfault) when a backend builds it: a native crash."""
    import ctypes
    import inspect

    if any(frame.function == "build_engine" for frame in inspect.stack()):
        ctypes.string_at(0)  # reads address 0: SIGSEGV, like a crashing native builder
    return tiny_cnn()


def slow_to_export() -> nn.Module:
    """Takes a minute when a worker exports it (a job that outlives a short limits.job_timeout_s); at once
    anywhere else (the spec check that calls each factory once)."""
    import inspect
    import time

    if any(frame.function == "export" and frame.filename.endswith("workers/models.py") for frame in inspect.stack()):
        time.sleep(60)
    return tiny_cnn()


def small_convnet() -> nn.Module:
    """Three convolutions with batch norm over 3x32x32 inputs: enough layers for channels_last and fusion to matter."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


class _Scaled(nn.Module):
    def __init__(self, inner: nn.Module, factor: float) -> None:
        super().__init__()
        self.inner, self.factor = inner, factor

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.inner(x) * self.factor


def degenerate_logits() -> nn.Module:
    """A classifier over 3x64x64 whose logits are about 1e-14, like random-weight efficientnet_b0's:
    in fp16 every one rounds to zero, so no agreement with it means anything."""
    return _Scaled(tiny_cnn(), 1e-14)


class _Sleepy(nn.Sequential):
    """small_convnet's layers (the same state dict) with a sleep before each forward."""

    def __init__(self, sleep_s: float) -> None:
        super().__init__(*small_convnet().children())
        self.sleep_s = sleep_s

    def forward(self, x):  # type: ignore[no-untyped-def]
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return super().forward(x)


def convnet_slowed_by_flag(flag: str, sleep_ms: float = 200.0) -> nn.Module:
    """small_convnet that sleeps `sleep_ms` in every forward when the file `flag` exists as it is made: a torch eager
    engine (made from its recipe each time it is opened) becomes slower for real between two benchmarks of one
    build, while the ONNX exported before stays as fast (tests/test_diff.py)."""
    return _Sleepy(sleep_ms / 1000 if Path(flag).exists() else 0.0)
