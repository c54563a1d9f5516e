"""One timing harness for every backend, measured the way trtexec measures.

Warm up for a while, then time single iterations until both a minimum duration and a
minimum count are reached. A measurement is a value with its spread: the raw
per-iteration times are kept, and the summary carries nearest-rank percentiles and the
coefficient of variation so that a noisy run is visible rather than hidden.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

NOISY_CV = 0.05  # trtexec warns above 1% on a quiet GPU; shared CPUs are rarely that quiet


@dataclass(frozen=True)
class BenchSettings:
    warmup_s: float = 0.2
    duration_s: float = 3.0
    min_iterations: int = 10
    max_iterations: int | None = None


@dataclass(frozen=True)
class Stats:
    mean: float
    median: float
    p90: float
    p95: float
    p99: float
    min: float
    max: float
    std: float
    cv: float  # std / mean

    @staticmethod
    def of(samples_ms: list[float]) -> Stats:
        if not samples_ms:
            raise ValueError("no samples to summarise")
        values = np.sort(np.asarray(samples_ms, dtype=np.float64))
        mean = float(values.mean())
        std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        return Stats(
            mean=mean,
            median=nearest_rank(values, 50),
            p90=nearest_rank(values, 90),
            p95=nearest_rank(values, 95),
            p99=nearest_rank(values, 99),
            min=float(values[0]),
            max=float(values[-1]),
            std=std,
            cv=std / mean if mean > 0 else 0.0,
        )


def nearest_rank(sorted_values: np.ndarray, percentile: float) -> float:
    """The nearest-rank percentile (no interpolation), as trtexec reports it."""
    rank = max(1, math.ceil(percentile / 100 * len(sorted_values)))
    return float(sorted_values[rank - 1])


@dataclass
class Timings:
    """The result of timing one engine at one batch size."""

    batch_size: int
    iterations: int
    wall_s: float  # host wall time of the timed loop
    latency: Stats  # end to end, host copies included, per iteration (ms)
    gpu_compute: Stats | None = None  # device time alone where a GPU timer exists (ms)
    raw_ms: list[float] = field(default_factory=list)
    raw_gpu_ms: list[float] | None = None

    @property
    def throughput(self) -> float:
        """Samples per second: batch x iterations / wall time."""
        return self.batch_size * self.iterations / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def noisy(self) -> bool:
        return self.latency.cv > NOISY_CV


# Device milliseconds of the last step's compute alone (CUDA events around the engine's work,
# copies excluded), read after synchronize(); CPU backends have none.
GpuTimer = Callable[[], float]


def measure(
    step: Callable[[], None],
    batch_size: int,
    settings: BenchSettings,
    *,
    synchronize: Callable[[], None] = lambda: None,
    gpu_timer: GpuTimer | None = None,
) -> Timings:
    """Time `step` (one complete inference, copies included) under `settings`.

    `synchronize` must wait for all work `step` queued (a no-op for CPU backends), so that
    each host-side time covers the whole inference.
    """
    clock = time.perf_counter
    warm_until = clock() + settings.warmup_s
    step()  # at least once: first calls allocate and autotune
    synchronize()
    while clock() < warm_until:
        step()
        synchronize()

    raw: list[float] = []
    raw_gpu: list[float] = []
    loop_start = clock()
    deadline = loop_start + settings.duration_s
    while True:
        t0 = clock()
        step()
        synchronize()
        raw.append((clock() - t0) * 1e3)
        if gpu_timer is not None:
            raw_gpu.append(gpu_timer())
        count = len(raw)
        if settings.max_iterations is not None and count >= settings.max_iterations:
            break
        if count >= settings.min_iterations and clock() >= deadline:
            break
    wall = clock() - loop_start
    return Timings(
        batch_size=batch_size,
        iterations=len(raw),
        wall_s=wall,
        latency=Stats.of(raw),
        gpu_compute=Stats.of(raw_gpu) if raw_gpu else None,
        raw_ms=raw,
        raw_gpu_ms=raw_gpu or None,
    )
