"""Peak resident memory of a piece of work, host and GPU, sampled from a thread while it runs."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable


class PeakMemory:
    """Peak resident memory inside `with`: of this process (absolute, and grown above what it held on
    entry) and, with `children=True`, of its child processes summed (Inductor compiles in g++ / nvcc
    subprocesses, which this process's own figure would miss).

    The kernel's own high-water mark (ru_maxrss) cannot be reset, so in a worker that already
    exported a model it reports no growth for most builds; sampling sees the work's own peak,
    at the price of missing spikes shorter than the interval.
    """

    def __init__(self, interval_s: float = 0.01, *, children: bool = False, gpu: int | None = None) -> None:
        self.interval_s = interval_s
        self.children = children
        self.start_bytes = 0
        self.peak_bytes = 0
        self.peak_children_bytes = 0
        self.samples = 0
        # With `gpu` (an NVML index): this process's memory on that GPU, as the driver accounts it (TensorRT's
        # and CUDA's own allocations included, which torch.cuda's counters miss); None where NVML cannot tell.
        self.gpu = gpu
        self.peak_device_bytes: int | None = None
        self._device_reader: Callable[[], int | None] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def growth_bytes(self) -> int:
        return max(0, self.peak_bytes - self.start_bytes)

    def _sample(self) -> None:
        import psutil

        process = psutil.Process()
        while True:
            self.samples += 1
            self.peak_bytes = max(self.peak_bytes, process.memory_info().rss)
            if self._device_reader is not None:
                used = self._device_reader()
                if used is not None:
                    self.peak_device_bytes = max(self.peak_device_bytes or 0, used)
            if self.children:
                total = 0
                for child in process.children(recursive=True):
                    try:
                        total += child.memory_info().rss
                    except psutil.Error:  # it ended between listing and reading
                        pass
                self.peak_children_bytes = max(self.peak_children_bytes, total)
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> PeakMemory:
        import psutil

        self.start_bytes = self.peak_bytes = psutil.Process().memory_info().rss
        self._device_reader = process_gpu_memory(self.gpu) if self.gpu is not None else None
        self._thread = threading.Thread(target=self._sample, name="peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def process_gpu_memory(index: int) -> Callable[[], int | None] | None:
    """A reader of this process's memory on NVML device `index` (None: no NVML or no such GPU)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    except Exception:  # no package, no driver library, no GPU: nothing to sample
        return None
    pid = os.getpid()

    def read() -> int | None:
        try:
            found = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        except pynvml.NVMLError:
            return None
        # A process in another PID namespace (a container) is not listed under its own PID: nothing to attribute.
        return next((int(p.usedGpuMemory) for p in found if p.pid == pid and p.usedGpuMemory is not None), None)

    return read
