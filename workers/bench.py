"""One timing harness for every backend: trtexec's statistics, perf_analyzer's stopping rule.

Warm up (on a GPU, until the SM clock has settled too), then time single iterations in
windows of `window_s`. Stop once both a minimum duration and a minimum count are reached and
either the last `stable_windows` windows' medians agree within `stability` of their mean
(perf_analyzer's rule) or `max_duration_s` has passed; `converged` says which. A
measurement is a value with its spread: the raw per-iteration times are kept, and the
summary carries nearest-rank percentiles, the coefficient of variation and a bootstrap
confidence interval on the median, so a noisy run is visible rather than hidden.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

NOISY_CV = 0.05  # trtexec warns above 1% on a quiet GPU; shared CPUs are rarely that quiet
CLOCK_SETTLE_CAP_S = 5.0  # warm-up waits at most this long beyond warmup_s for a GPU clock to settle
CLOCK_SETTLED = 0.02  # two SM clock reads 0.1 s apart within 2%: settled
BOOTSTRAP_RESAMPLES = 1000


@dataclass(frozen=True)
class BenchSettings:
    warmup_s: float = 0.2
    duration_s: float = 1.0  # at least this long timed in total (trtexec's --duration)
    min_iterations: int = 10  # and at least this many iterations (trtexec's --iterations)
    max_iterations: int | None = None
    window_s: float = 0.5  # one stability window (perf_analyzer's measurement interval)
    stable_windows: int = 3  # how many consecutive windows must agree
    stability: float = 0.05  # within this fraction of their mean (perf_analyzer's --stability-percentage)
    max_duration_s: float = 10.0  # the time cap: stop unconverged rather than time forever
    data_transfers: bool = True  # GPU: copy inputs in and outputs out every iteration (trtexec's default)


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


def median_interval(samples_ms: list[float], confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """A bootstrap confidence interval on the median (percentile method over resampled medians).

    It treats iterations as independent draws; drift makes them less so, which is why the
    windows must also agree before a measurement counts as converged.
    """
    values = np.asarray(samples_ms, dtype=np.float64)
    if len(values) < 2:
        return (float(values[0]), float(values[0])) if len(values) else (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(values, size=(BOOTSTRAP_RESAMPLES, len(values)), replace=True), axis=1)
    tail = (1 - confidence) / 2 * 100
    return float(np.percentile(medians, tail)), float(np.percentile(medians, 100 - tail))


def windows_agree(medians: list[float], count: int, stability: float) -> bool:
    """perf_analyzer's rule: the last `count` windows' medians all lie within `stability` of their mean."""
    if len(medians) < count:
        return False
    last = medians[-count:]
    centre = sum(last) / count
    return centre > 0 and all(abs(m - centre) <= stability * centre for m in last)


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
    window_medians: list[float] = field(default_factory=list)  # ms, one per stability window
    converged: bool = False  # the last windows agreed before the time cap
    p50_interval: tuple[float, float] | None = None  # 95% bootstrap interval on the median latency (ms)
    clocks: dict[str, int | None] = field(default_factory=dict)  # GPU: SM clock (MHz) at start and end, and its maximum
    data_transfers: bool = True
    peak_host_memory_bytes: int | None = None  # grown while the engine was opened and timed
    peak_device_memory_bytes: int | None = None  # this process's on the GPU it timed on (GPU runners)

    @property
    def throughput(self) -> float:
        """Samples per second: batch x iterations / wall time."""
        return self.batch_size * self.iterations / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def noisy(self) -> bool:
        return self.latency.cv > NOISY_CV or not self.converged


# Device milliseconds of the last step's compute alone (CUDA events around the engine's work,
# copies excluded), read after synchronize(); CPU backends have none.
GpuTimer = Callable[[], float]
# The SM clock (MHz) of the device being timed, or None where there is none to read.
ClockReader = Callable[[], int | None]


def _warm_up(
    step: Callable[[], None], synchronize: Callable[[], None], settings: BenchSettings, clock: ClockReader | None, now: Callable[[], float]
) -> None:
    """Run for warmup_s; on a GPU, go on (up to CLOCK_SETTLE_CAP_S) until two SM clock reads agree."""
    step()  # at least once: first calls allocate and autotune
    synchronize()
    until = now() + settings.warmup_s
    while now() < until:
        step()
        synchronize()
    if clock is None:
        return
    cap, last, last_read = until + CLOCK_SETTLE_CAP_S, clock(), now()
    while last is not None and now() < cap:
        step()
        synchronize()
        if now() - last_read >= 0.1:
            current, last_read = clock(), now()
            if current is None or abs(current - last) <= CLOCK_SETTLED * max(last, 1):
                return
            last = current


def measure(
    step: Callable[[], None],
    batch_size: int,
    settings: BenchSettings,
    *,
    synchronize: Callable[[], None] = lambda: None,
    gpu_timer: GpuTimer | None = None,
    clock: ClockReader | None = None,
    now: Callable[[], float] = time.perf_counter,
) -> Timings:
    """Time `step` (one complete inference, copies included unless the runner was prepared without)
    under `settings`, in stability windows.

    `synchronize` must wait for all work `step` queued (a no-op for CPU backends), so that
    each host-side time covers the whole inference. `now` is the seconds clock (tests pass a
    fake one so that the stopping rules are checked without timing anything).
    """
    start_clock = clock() if clock else None
    _warm_up(step, synchronize, settings, clock, now)
    settled_clock = clock() if clock else None

    raw: list[float] = []
    raw_gpu: list[float] = []
    medians: list[float] = []
    loop_start = now()
    window_start, window_first = loop_start, 0
    converged = False
    while True:
        t0 = now()
        step()
        synchronize()
        t1 = now()
        raw.append((t1 - t0) * 1e3)
        if gpu_timer is not None:
            raw_gpu.append(gpu_timer())
        if t1 - window_start >= settings.window_s:
            medians.append(float(np.median(raw[window_first:])))
            window_start, window_first = t1, len(raw)
            converged = windows_agree(medians, settings.stable_windows, settings.stability)
        if settings.max_iterations is not None and len(raw) >= settings.max_iterations:
            break
        # The floors (trtexec's) always hold; the cap only ends the wait for windows that agree.
        enough = len(raw) >= settings.min_iterations and t1 - loop_start >= settings.duration_s
        if enough and (converged or t1 - loop_start >= settings.max_duration_s):
            break
    wall = now() - loop_start
    clocks = {} if clock is None else {"sm_mhz_start": start_clock, "sm_mhz_settled": settled_clock, "sm_mhz_end": clock()}
    return Timings(
        batch_size=batch_size,
        iterations=len(raw),
        wall_s=wall,
        latency=Stats.of(raw),
        gpu_compute=Stats.of(raw_gpu) if raw_gpu else None,
        raw_ms=raw,
        raw_gpu_ms=raw_gpu or None,
        window_medians=medians,
        converged=converged,
        p50_interval=median_interval(raw),
        clocks=clocks,
        data_transfers=settings.data_transfers,
    )


def time_window(step: Callable[[], None], synchronize: Callable[[], None], window_s: float, min_iterations: int = 3) -> list[float]:
    """Per-iteration milliseconds of `step` for one window: at least `window_s` and `min_iterations`."""
    now = time.perf_counter
    times: list[float] = []
    until = now() + window_s
    while len(times) < min_iterations or now() < until:
        t0 = now()
        step()
        synchronize()
        times.append((now() - t0) * 1e3)
    return times
