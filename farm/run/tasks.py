"""The one Ray task that runs any stage's call, and what it hands back: an Outcome.

A stage (farm.run.stages) builds one frozen `Call` per job, carrying its worker function's
arguments; `submit` sends it to `call_task`, which runs `call.run()`. A Python exception becomes a
failed Outcome with a one-line error and the traceback as its log; everything the stage printed
(native libraries included: the file descriptors are redirected) is kept as the log too. A stage
may ask for its call to run in a fresh process forked for it (farm.run.isolated: builds, unless
the spec turns `limits.isolate_builds` off), so a native crash or leaked memory costs only that job.
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
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

import ray

from farm.run import isolated
from workers.stage_work import Rejected

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


@dataclass(frozen=True, kw_only=True)
class Call:
    """One job's arguments, built once by its stage, and the worker function they go to.

    A stage's call is a frozen, keyword-only dataclass of its own. A field may hold a ray.ObjectRef, or a tuple
    of them, where the worker wants the bytes or array it names: the task receives the value."""

    def run(self) -> Any:
        """The worker function's answer: a value, or (value, {role: bytes}) when it leaves artifacts."""
        raise NotImplementedError

    def progress(self) -> ProgressForwarder | None:
        """Where the call reports how far it got; None for a call that reports nothing."""
        return None

    def reporting_to(self, progress: ProgressForwarder | None) -> Call:
        """The same call, reporting through `progress` (an isolated child posts to its parent)."""
        return self


C = TypeVar("C", bound=Call)


def run_call(call: Call) -> Outcome:
    started = time.perf_counter()
    device: dict[str, Any] = where_this_runs() if ray.is_initialized() else {"host": socket.gethostname(), "gpus": []}
    device["started"] = time.time()  # wall clock, so that jobs of different processes can be ordered
    capture = _Capture()
    try:
        with _captured_output(capture):
            value = call.run()
    except Exception as exc:  # the farm keeps going: the failure becomes a row
        message = " ".join(str(exc).split()) or type(exc).__name__
        log = capture.text + "\n" + traceback.format_exc()
        device["ended"] = time.time()
        judged = exc if isinstance(exc, Rejected) else None  # not viable: a finding, its numbers the value
        error = message if judged is not None else f"{type(exc).__name__}: {message}"
        return Outcome(False, value=judged.details if judged is not None else None, error=error[:1000], log=log,
                       seconds=time.perf_counter() - started, node=device["host"], device=device, rejected=judged is not None)
    device["ended"] = time.time()
    value, blobs = value if isinstance(value, tuple) else (value, {})
    return Outcome(True, value, blobs, log=capture.text, seconds=time.perf_counter() - started, node=device["host"], device=device)


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


def submit(call: Call, options: dict[str, Any], isolate: bool = False, warm: bool = False) -> ray.ObjectRef:
    """Start `call` in a Ray task with `options` (resources, retries, placement); with `isolate`, in a
    child process forked for it. `warm`: the sweep isolates its builds, so a task that is not isolated
    starts its worker's forkserver in the background, ready for the first build that worker gets."""
    held, refs = _lift(call)
    if isolate:
        return isolated_call_task.options(**options).remote(held, *refs)
    return call_task.options(**options).remote(held, *refs, warm=warm)


@dataclass(frozen=True)
class _Lifted:
    """Where a call held an object ref: its place among the task's top-level arguments."""

    index: int


def _lift(call: C) -> tuple[C, list[ray.ObjectRef]]:
    """The call with each object ref replaced by its place, and the refs. Ray resolves refs only among a
    task's top-level arguments; left inside the call, the task would have to ray.get them, and a task
    blocked in ray.get hands its CPUs back, so another job could start beside a timing that holds its host."""
    refs: list[ray.ObjectRef] = []

    def lift(value: Any) -> Any:
        if isinstance(value, ray.ObjectRef):
            refs.append(value)
            return _Lifted(len(refs) - 1)
        if isinstance(value, tuple) and any(isinstance(v, ray.ObjectRef) for v in value):
            return tuple(lift(v) for v in value)
        return value

    return replace(call, **{f.name: lift(getattr(call, f.name)) for f in fields(call)}), refs


def _land(call: C, resolved: tuple[Any, ...]) -> C:
    """`_lift` undone in the task: each place gets the value Ray resolved there."""

    def land(value: Any) -> Any:
        if isinstance(value, _Lifted):
            return resolved[value.index]
        if isinstance(value, tuple) and any(isinstance(v, _Lifted) for v in value):
            return tuple(land(v) for v in value)
        return value

    return replace(call, **{f.name: land(getattr(call, f.name)) for f in fields(call)})


@ray.remote(num_cpus=1)
def call_task(call: Call, *resolved: Any, warm: bool = False) -> Outcome:
    """Any stage's call; `resolved`: the values of the object refs `submit` lifted out of it."""
    if warm:
        isolated.warm()
    return run_call(_land(call, resolved))


@ray.remote(num_cpus=1)
def isolated_call_task(call: Call, *resolved: Any) -> Outcome:
    """A call in a child process forked for it (farm.run.isolated): a native crash or a leak ends that child only."""
    call = _land(call, resolved)
    forwarder = call.progress()
    # The progress queue (a Ray actor) stays in this process: the child posts to it here, and this forwards.
    # A child that dies raises isolated.ChildDied, which the stage submits with retry_exceptions: Ray tries again.
    outcome: Outcome = isolated.call(_call_in_child, call.reporting_to(None), forwarder.key if forwarder else None,
                                     on_message=forwarder.send if forwarder else _ignore)
    outcome.device = where_this_runs() | {k: v for k, v in (outcome.device or {}).items() if k in ("started", "ended")}
    return outcome


def _ignore(_message: Any) -> None:
    pass


class _Posting:
    """A queue's put_nowait that posts to the parent of an isolated call (farm.run.isolated)."""

    def __init__(self, post: Callable[[Any], None]) -> None:
        self.put_nowait = post


def _call_in_child(post: Callable[[Any], None], call: Call, progress_key: str | None) -> Outcome:
    return run_call(call.reporting_to(ProgressForwarder(_Posting(post), progress_key) if progress_key is not None else None))
