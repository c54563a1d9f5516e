"""Device buffers, pinned host buffers, streams, events and CUDA graphs through cuda-python.

Every cuda-python call returns `(err, *values)`; `check()` turns a failed one into a
`CudaError` that names the call and the CUDA error. Each resource is a context manager so
that a runner frees what it allocated even when a benchmark throws.

`python -m workers.cuda` times a copy-and-memset workload with these same helpers (events
and host wall time) and prints a JSON summary: a check of the timing code on any GPU,
TensorRT or not.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from workers.bench import Stats

INSTALL_HINT = "pip install cuda-python (or 'farm[tensorrt]')"


class CudaError(RuntimeError):
    """A CUDA runtime call failed, or cuda-python is missing."""


def runtime_api() -> Any:
    """The CUDA runtime module of cuda-python: `cuda.bindings.runtime` (12.6+, 13), else `cuda.cudart`."""
    # importlib rather than `from cuda.bindings import runtime`: the module is compiled and untyped either way.
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise CudaError(f"cuda-python is not installed: {INSTALL_HINT}")


def check(result: Any, call: str) -> Any:
    """Raise `CudaError` unless `result[0]` is cudaSuccess; return the remaining values (None, one, or a tuple)."""
    cudart = runtime_api()
    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        _, name = cudart.cudaGetErrorName(err)
        _, text = cudart.cudaGetErrorString(err)
        raise CudaError(f"{call} failed: {_text(name)}: {_text(text)}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class DeviceBuffer:
    """`nbytes` of device memory (cudaMalloc), freed on close."""

    def __init__(self, nbytes: int) -> None:
        self._cudart = runtime_api()
        self.nbytes = nbytes
        self.ptr: int = int(check(self._cudart.cudaMalloc(max(nbytes, 1)), f"cudaMalloc({nbytes})"))

    def close(self) -> None:
        if self.ptr:
            check(self._cudart.cudaFree(self.ptr), "cudaFree")
            self.ptr = 0

    def __enter__(self) -> DeviceBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PinnedBuffer:
    """`nbytes` of page-locked host memory (cudaMallocHost), so copies can be asynchronous."""

    def __init__(self, nbytes: int) -> None:
        self._cudart = runtime_api()
        self.nbytes = nbytes
        self.ptr: int = int(check(self._cudart.cudaMallocHost(max(nbytes, 1)), f"cudaMallocHost({nbytes})"))

    def array(self, dtype: np.dtype[Any] | type, shape: tuple[int, ...]) -> np.ndarray:
        """A numpy view of the buffer; valid only while the buffer is open."""
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        if count * dtype.itemsize > self.nbytes:
            raise ValueError(f"a {dtype.name} array of shape {shape} does not fit in {self.nbytes} pinned bytes")
        raw = (ctypes.c_byte * max(self.nbytes, 1)).from_address(self.ptr)
        return np.frombuffer(memoryview(raw).cast("B"), dtype=dtype, count=count).reshape(shape)

    def close(self) -> None:
        if self.ptr:
            check(self._cudart.cudaFreeHost(self.ptr), "cudaFreeHost")
            self.ptr = 0

    def __enter__(self) -> PinnedBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Stream:
    """A non-blocking stream: it never waits on the legacy default stream, and it can be captured into a graph."""

    def __init__(self) -> None:
        self._cudart = runtime_api()
        self.handle: Any = check(
            self._cudart.cudaStreamCreateWithFlags(self._cudart.cudaStreamNonBlocking), "cudaStreamCreateWithFlags"
        )

    @property
    def ptr(self) -> int:
        """The raw cudaStream_t, as TensorRT's `execute_async_v3(stream_handle)` wants it."""
        return int(self.handle)

    def synchronize(self) -> None:
        check(self._cudart.cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def close(self) -> None:
        if self.handle is not None:
            check(self._cudart.cudaStreamDestroy(self.handle), "cudaStreamDestroy")
            self.handle = None

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Event:
    """A timing event; `elapsed_ms(start, end)` reads the device time between two recorded events."""

    def __init__(self) -> None:
        self._cudart = runtime_api()
        self.handle: Any = check(self._cudart.cudaEventCreate(), "cudaEventCreate")

    def record(self, stream: Stream) -> None:
        check(self._cudart.cudaEventRecord(self.handle, stream.handle), "cudaEventRecord")

    def synchronize(self) -> None:
        check(self._cudart.cudaEventSynchronize(self.handle), "cudaEventSynchronize")

    @staticmethod
    def elapsed_ms(start: Event, end: Event) -> float:
        return float(check(start._cudart.cudaEventElapsedTime(start.handle, end.handle), "cudaEventElapsedTime"))

    def close(self) -> None:
        if self.handle is not None:
            check(self._cudart.cudaEventDestroy(self.handle), "cudaEventDestroy")
            self.handle = None

    def __enter__(self) -> Event:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Graph:
    """The work that `enqueue` queues on `stream`, captured once and replayed with one launch."""

    def __init__(self, stream: Stream, enqueue: Callable[[], None]) -> None:
        self._cudart = cudart = runtime_api()
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        check(cudart.cudaStreamBeginCapture(stream.handle, mode), "cudaStreamBeginCapture")
        try:
            enqueue()
        except BaseException:
            # End the capture whatever happened, or the stream stays unusable.
            graph = cudart.cudaStreamEndCapture(stream.handle)[1]
            if graph is not None:
                cudart.cudaGraphDestroy(graph)
            raise
        graph = check(cudart.cudaStreamEndCapture(stream.handle), "cudaStreamEndCapture")
        try:
            self.handle: Any = check(cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        finally:
            check(cudart.cudaGraphDestroy(graph), "cudaGraphDestroy")

    def launch(self, stream: Stream) -> None:
        check(self._cudart.cudaGraphLaunch(self.handle, stream.handle), "cudaGraphLaunch")

    def close(self) -> None:
        if self.handle is not None:
            check(self._cudart.cudaGraphExecDestroy(self.handle), "cudaGraphExecDestroy")
            self.handle = None

    def __enter__(self) -> Graph:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def copy_to_device(dst: DeviceBuffer, src: PinnedBuffer, nbytes: int, stream: Stream) -> None:
    cudart = runtime_api()
    kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
    check(cudart.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, kind, stream.handle), "cudaMemcpyAsync(host to device)")


def copy_to_host(dst: PinnedBuffer, src: DeviceBuffer, nbytes: int, stream: Stream) -> None:
    cudart = runtime_api()
    kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
    check(cudart.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, kind, stream.handle), "cudaMemcpyAsync(device to host)")


def fill_async(dst: DeviceBuffer, value: int, nbytes: int, stream: Stream) -> None:
    cudart = runtime_api()
    check(cudart.cudaMemsetAsync(dst.ptr, value, nbytes, stream.handle), "cudaMemsetAsync")


def describe_device(device: int = 0) -> dict[str, Any]:
    """Name, compute capability and driver/runtime versions of one GPU (fails with CudaError where there is none)."""
    cudart = runtime_api()
    count = check(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
    if count <= device:
        raise CudaError(f"no CUDA device {device}: {count} visible")
    check(cudart.cudaSetDevice(device), "cudaSetDevice")
    props = check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    return {
        "name": _text(props.name).rstrip("\x00"),
        "compute_capability": f"{props.major}.{props.minor}",
        "driver_version": check(cudart.cudaDriverGetVersion(), "cudaDriverGetVersion"),
        "runtime_version": check(cudart.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion"),
    }


def time_copy_workload(nbytes: int, iterations: int, warmup: int = 3) -> dict[str, Any]:
    """Time host-to-device copy, device memset and device-to-host copy of `nbytes`, each between two events.

    Every iteration checks that the bytes that came back are the memset's value, so a copy
    that silently did nothing fails the run instead of producing a fast number. The same
    memset + copy back is also captured into a CUDA graph and replayed. Host wall time per
    iteration sits beside the event total so the two clocks can be compared.
    """
    if nbytes <= 0 or iterations <= 0:
        raise ValueError("nbytes and iterations must be positive")
    device = describe_device()
    phases = ("h2d", "memset", "d2h")
    samples: dict[str, list[float]] = {name: [] for name in (*phases, "events_total", "host_wall", "graph_replay")}
    with PinnedBuffer(nbytes) as host, DeviceBuffer(nbytes) as dev, Stream() as stream:
        view = host.array(np.uint8, (nbytes,))
        marks = [Event() for _ in range(len(phases) + 1)]
        try:
            for i in range(warmup + iterations):
                value = (i % 250) + 1
                view[:] = 0
                started = time.perf_counter()
                marks[0].record(stream)
                copy_to_device(dev, host, nbytes, stream)
                marks[1].record(stream)
                fill_async(dev, value, nbytes, stream)
                marks[2].record(stream)
                copy_to_host(host, dev, nbytes, stream)
                marks[3].record(stream)
                stream.synchronize()
                wall_ms = (time.perf_counter() - started) * 1e3
                _expect(view, value)
                if i < warmup:
                    continue
                for name, (a, b) in zip(phases, zip(marks, marks[1:]), strict=True):
                    samples[name].append(Event.elapsed_ms(a, b))
                samples["events_total"].append(Event.elapsed_ms(marks[0], marks[-1]))
                samples["host_wall"].append(wall_ms)

            replay_value = 7

            def fill_and_copy_back() -> None:
                fill_async(dev, replay_value, nbytes, stream)
                copy_to_host(host, dev, nbytes, stream)

            with Graph(stream, fill_and_copy_back) as graph:
                for i in range(warmup + iterations):
                    view[:] = 0
                    marks[0].record(stream)
                    graph.launch(stream)
                    marks[1].record(stream)
                    stream.synchronize()
                    _expect(view, replay_value)
                    if i >= warmup:
                        samples["graph_replay"].append(Event.elapsed_ms(marks[0], marks[1]))
        finally:
            for mark in marks:
                mark.close()

    stats = {name: Stats.of(values) for name, values in samples.items()}
    gigabytes = nbytes / 1e9
    return {
        "device": device,
        "nbytes": nbytes,
        "iterations": iterations,
        "ms": {name: {"median": s.median, "p90": s.p90, "min": s.min, "max": s.max, "cv": s.cv} for name, s in stats.items()},
        "bandwidth_gb_s": {name: gigabytes / (stats[name].median / 1e3) for name in phases},
        # Host wall includes the launch calls and the synchronize: it should sit slightly above the event total.
        "host_over_events": stats["host_wall"].median / stats["events_total"].median,
    }


def _expect(view: np.ndarray, value: int) -> None:
    probe = view[:: max(1, view.size // 4096)]
    if not (probe == value).all() or view[-1] != value:
        raise CudaError(f"device round trip returned wrong bytes (expected {value} everywhere)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.cuda", description=time_copy_workload.__doc__)
    parser.add_argument("--mib", type=int, default=256, help="buffer size in MiB")
    parser.add_argument("--iterations", type=int, default=20)
    args = parser.parse_args(argv)
    try:
        summary = time_copy_workload(args.mib << 20, args.iterations)
    except CudaError as exc:
        print(f"workers.cuda: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
