"""Ray tasks: each one calls a single workers.stages function and returns an Outcome.

A Python exception becomes a failed Outcome with a one-line error and the traceback as its
log; everything the stage printed (native libraries included: the file descriptors are
redirected) is kept as the log too. The driver runs each build in a fresh process
forked for it (farm.run.isolated, unless the spec turns `limits.isolate_builds` off), so a native
crash or leaked memory costs only that job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray

from farm.run import isolated
from workers import stages
from workers.backends.base import BuildContext
from workers.bench import BenchSettings
from workers.structs import BuildRequest, Manifest, ModelRef

LOG_LIMIT = 200_000  # characters of log kept per job


@dataclass
class Outcome:
    ok: bool
    value: Any = None  # the stage's record
    blobs: dict[str, bytes] = field(default_factory=dict)  # artifacts by role: "onnx", "engine", ...
    error: str | None = None
    log: str = ""
    seconds: float = 0.0
    node: str = ""
    inherited: dict[str, str] = field(default_factory=dict)  # artifacts reused from a parent: role -> sha256
    device: dict[str, Any] | None = None  # where it ran: host, Ray node, the GPUs it held (UUIDs)
    rejected: bool = False  # not ok, but judged: a finding (value holds its numbers), stored as "rejected" and not retried


@dataclass
class _Capture:
    text: str = ""


@contextlib.contextmanager
def _captured_output(capture: _Capture) -> Iterator[None]:
    """Send fd 1 and 2 (Python and native writers alike) and Python logging to one temporary file."""
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = [os.dup(1), os.dup(2)]
        handler = logging.StreamHandler(open(sink.fileno(), "w", closefd=False))  # noqa: SIM115
        logging.getLogger().addHandler(handler)
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            handler.flush()
            logging.getLogger().removeHandler(handler)
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            capture.text = sink.read()[-LOG_LIMIT:].decode(errors="replace")


def where_this_runs() -> dict[str, Any]:
    """The host (its name, and its id as placement counts it), the Ray node and the GPUs this task holds
    (by UUID: indices differ per process)."""
    from workers.device import assigned_gpus, host_id

    held = [g.uuid for g in assigned_gpus()] if ray.get_gpu_ids() else []
    return {"host": socket.gethostname(), "host_id": host_id(), "ray_node": ray.get_runtime_context().get_node_id(), "gpus": held}


def run_stage(stage: Callable[..., Any], *args: Any) -> Outcome:
    started = time.perf_counter()
    device = where_this_runs() if ray.is_initialized() else {"host": socket.gethostname(), "gpus": []}
    device["started"] = time.time()  # wall clock, so that jobs of different processes can be ordered
    capture = _Capture()
    try:
        with _captured_output(capture):
            value = stage(*args)
    except Exception as exc:  # the farm keeps going: the failure becomes a row
        message = " ".join(str(exc).split()) or type(exc).__name__
        log = capture.text + "\n" + traceback.format_exc()
        device["ended"] = time.time()
        judged = exc if isinstance(exc, stages.Rejected) else None  # not viable: a finding, its numbers the value
        error = message if judged is not None else f"{type(exc).__name__}: {message}"
        return Outcome(False, value=judged.details if judged is not None else None, error=error[:1000], log=log,
                       seconds=time.perf_counter() - started, node=device["host"], device=device, rejected=judged is not None)
    device["ended"] = time.time()
    value, blobs = value if isinstance(value, tuple) else (value, {})
    return Outcome(True, value, blobs, log=capture.text, seconds=time.perf_counter() - started, node=device["host"], device=device)


def _export(model: ModelRef) -> tuple[Any, dict[str, bytes]]:
    exported = stages.export_model(model)
    blobs = {"onnx": exported.onnx_bytes}
    if exported.checkpoint is not None:
        blobs["checkpoint"] = exported.checkpoint
    return exported.info, blobs


def _reference(fp32: bytes, inputs: np.ndarray, batch_size: int, task: str, box_score_threshold: float) -> tuple[Any, dict[str, bytes]]:
    found = stages.reference_run(fp32, inputs, batch_size, task, box_score_threshold=box_score_threshold)
    return {"samples": len(inputs), "noise_floor": found.noise_floor, "note": found.note}, {"reference": found.outputs}


def _calibrate(fp32: bytes, inputs: np.ndarray, method: str, percentile: float) -> tuple[Any, dict[str, bytes]]:
    ranges = stages.calibrate_model(fp32, inputs, method, percentile)
    return {"samples": ranges.samples, "tensors": len(ranges.tensors), "seconds": ranges.seconds}, {"ranges": ranges.to_bytes()}


def _variant(fp32: bytes, precision: str, data: dict[str, Any], settings: dict[str, Any]) -> tuple[Any, dict[str, bytes]]:
    variant = stages.make_variant(fp32, precision, **data, **settings)
    return variant.details, {"onnx": variant.onnx_bytes}


def _build(request: BuildRequest, variant: bytes | None, checkpoint: bytes | None, context: BuildContext) -> tuple[Any, dict[str, bytes]]:
    engine = stages.build_engine(request, variant, checkpoint, context)
    blobs = {"engine": engine.data}
    engine.data = b""  # the bytes travel once, as a blob
    if engine.builder_cache:
        blobs["builder_cache"] = engine.builder_cache
        engine.builder_cache = None
    return engine, blobs


class ProgressForwarder:
    """Sends a build's progress to the driver's queue: each new phase, then at most every `interval_s`."""

    def __init__(self, queue: Any, key: str, interval_s: float = 0.5) -> None:
        self.queue, self.key, self.interval_s = queue, key, interval_s
        self.last_phase = ""
        self.last_sent = 0.0

    def __call__(self, phase: str, done: int, total: int) -> bool:
        now = time.monotonic()
        if phase != self.last_phase or now - self.last_sent >= self.interval_s or done == total:
            self.last_phase, self.last_sent = phase, now
            self.send((self.key, phase, done, total))
        return True

    def send(self, item: tuple[str, str, int, int]) -> None:
        try:
            self.queue.put_nowait(item)
        except Exception:  # a full or gone queue must never fail a build
            pass


def build_context(key: str, caches: tuple[bytes, ...], progress: Any | None) -> BuildContext:
    return BuildContext(progress=ProgressForwarder(progress, key) if progress is not None else None, caches=caches)


@ray.remote(num_cpus=1)
def export_task(model: ModelRef) -> Outcome:
    return run_stage(_export, model)


@ray.remote(num_cpus=1)
def reference_task(fp32: bytes, inputs: np.ndarray, batch_size: int, task: str, box_score_threshold: float = 0.5) -> Outcome:
    return run_stage(_reference, fp32, inputs, batch_size, task, box_score_threshold)


@ray.remote(num_cpus=1)
def calibrate_task(fp32: bytes, inputs: np.ndarray, method: str, percentile: float) -> Outcome:
    return run_stage(_calibrate, fp32, inputs, method, percentile)


@ray.remote(num_cpus=1)
def variant_task(
    fp32: bytes,
    precision: str,
    ranges: bytes | None,
    heldout: np.ndarray | None,
    reference: bytes | None,
    labels: np.ndarray | None,
    settings: dict[str, Any],
) -> Outcome:
    """The data come as top-level arguments: Ray resolves object refs there, not inside a dict."""
    data = {"ranges": ranges, "heldout": heldout, "reference": reference, "labels": labels}
    return run_stage(_variant, fp32, precision, data, settings)


@ray.remote(num_cpus=1)
def isolated_build_task(request: BuildRequest, variant: bytes | None, checkpoint: bytes | None, context: BuildContext) -> Outcome:
    """A build in a child process forked for it (farm.run.isolated): a native crash or a leak ends that child only."""
    forwarder = context.progress if isinstance(context.progress, ProgressForwarder) else None
    # A child that dies raises isolated.ChildDied, which the driver submits with retry_exceptions: Ray tries again.
    outcome: Outcome = isolated.call(_build_in_child, request, variant, checkpoint, context.caches,
                                     forwarder.key if forwarder else None, on_message=forwarder.send if forwarder else _ignore)
    outcome.device = where_this_runs() | {k: v for k, v in (outcome.device or {}).items() if k in ("started", "ended")}
    return outcome


def _ignore(_message: Any) -> None:
    pass


class _Posting:
    """A queue's put_nowait that posts to the parent of an isolated build (farm.run.isolated)."""

    def __init__(self, post: Callable[[Any], None]) -> None:
        self.put_nowait = post


def _build_in_child(post: Callable[[Any], None], request: BuildRequest, variant: bytes | None, checkpoint: bytes | None,
                    caches: tuple[bytes, ...], progress_key: str | None) -> Outcome:
    progress = ProgressForwarder(_Posting(post), progress_key) if progress_key is not None else None
    return run_stage(_build, request, variant, checkpoint, BuildContext(progress=progress, caches=caches))


@ray.remote(num_cpus=1)
def build_task(request: BuildRequest, variant: bytes | None, checkpoint: bytes | None, context: BuildContext) -> Outcome:
    return run_stage(_build, request, variant, checkpoint, context)


@ray.remote
def benchmark_task(engine: bytes, manifest: Manifest, batch_size: int, settings: BenchSettings, caches: tuple[bytes, ...] = ()) -> Outcome:
    return run_stage(stages.benchmark_engine, engine, manifest, batch_size, settings, caches)


@ray.remote(num_cpus=1)
def fidelity_task(
    engine: bytes, manifest: Manifest, inputs: np.ndarray, reference: bytes, batch_size: int, labels: np.ndarray | None,
    task: str, box_score_threshold: float, caches: tuple[bytes, ...] = (),
) -> Outcome:
    return run_stage(stages.engine_fidelity, engine, manifest, inputs, reference, batch_size, labels, task, box_score_threshold, caches)


@ray.remote
def retime_task(
    keys: list[str], manifests: list[Manifest], caches: list[tuple[bytes, ...]], batch_size: int, rounds: int, window_s: float,
    data_transfers: bool, *engines: bytes,
) -> Outcome:
    """The engines come last, each its own argument: Ray resolves object refs there, not inside a list."""
    return run_stage(_retime, keys, list(zip(engines, manifests, caches, strict=True)), batch_size, rounds, window_s, data_transfers)


def _retime(keys: list[str], engines: list[tuple[bytes, Manifest, tuple[bytes, ...]]], batch_size: int, rounds: int,
            window_s: float, data_transfers: bool) -> dict[str, Any]:
    found = stages.retime_engines(engines, batch_size, rounds, window_s, data_transfers)
    return {"contenders": keys, "rounds": dict(zip(keys, found, strict=True)), "reason": None}
