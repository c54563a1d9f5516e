"""Run a function in a child process forked from a warm server: crash isolation without a cold start.

An isolated build used to get a Ray worker of its own (`max_calls=1`), which contains a native
crash or a leak, but costs a new interpreter and its imports, and leaves the node one warm
worker short, so the next job there waits for another (0.6-1.6 s a build on a 2-core machine:
benchmarks/farm_overhead.py). Here the Ray worker stays; the build runs in a child forked from a
forkserver that imported farm's workers once (per Ray worker process). A crash or the OOM killer
ends the child only, and the caller learns its exit status.

The forkserver was started before any task's environment was set, so the child takes the
caller's environment (Ray's CUDA_VISIBLE_DEVICES for this task, thread settings) before it runs.
The forkserver never touches CUDA; a child initialises it for itself.
"""

from __future__ import annotations

import functools
import multiprocessing
import multiprocessing.connection
import mmap
import os
import signal
import threading
from collections.abc import Callable
from multiprocessing import reduction
from multiprocessing.context import ForkServerContext
from typing import Any

PRELOAD = ["farm.run.stages"]  # what every child would import anyway: the stages' calls, farm's workers and their backends
_DONE = "farm.run.isolated: done"  # the end of a child's messages


class ChildDied(RuntimeError):
    """The child ended without an answer: killed by a signal (a native crash, the OOM killer) or exit()."""

    def __init__(self, exitcode: int | None) -> None:
        self.exitcode = exitcode
        if exitcode is not None and exitcode < 0:
            try:
                how = f"killed by {signal.Signals(-exitcode).name}"
            except ValueError:
                how = f"killed by signal {-exitcode}"
        else:
            how = f"exited with status {exitcode}"
        hint = " (out of memory?)" if exitcode == -signal.SIGKILL else ""
        super().__init__(f"the isolated process {how}{hint}")

    def __reduce__(self) -> tuple[type[ChildDied], tuple[int | None]]:
        return ChildDied, (self.exitcode,)  # crosses Ray as itself, not as its message


@functools.cache
def _context() -> ForkServerContext:
    """One forkserver per process that asks for one, with farm's imports done in it once."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def warm() -> None:
    """Start this process's forkserver now; it imports PRELOAD in its own process (2 s on a 2-core machine,
    143 MiB), which then overlaps the job this process runs instead of delaying its first isolated build."""
    _context()
    from multiprocessing import forkserver

    forkserver.ensure_running()


class _Fd:
    """A file descriptor handed to the child: duplicated into it as the Process starts (forkserver
    passes descriptors over its Unix socket), arriving there as a plain int."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Callable[[Any], int], tuple[Any]]:
        return _detach, (reduction.DupFd(self.fd),)  # DupFd only works while a Process is being started


def _detach(duplicate: Any) -> int:
    return int(duplicate.detach())


def _write(fd: int, value: Any) -> None:
    with open(fd, "wb", closefd=False) as file:
        reduction.ForkingPickler(file, -1).dump(value)  # -1: the highest protocol, whose large bytes go to the file as they are


def _read(fd: int) -> Any:
    """What the other side of a call wrote to `fd`: multiprocessing's own pickles, between this
    process and its child only (an anonymous memory file: a pipe's trust, not a file's)."""
    with mmap.mmap(fd, os.fstat(fd).st_size, prot=mmap.PROT_READ) as view:
        return reduction.ForkingPickler.loads(view)


def _child(inbox: int, outbox: int, done: multiprocessing.connection.Connection, messages: Any, environment: dict[str, str]) -> None:
    os.environ.clear()
    os.environ.update(environment)
    function, args = _read(inbox)
    os.close(inbox)
    post = messages.put if messages is not None else None
    _write(outbox, function(post, *args) if messages is not None else function(*args))
    os.close(outbox)
    done.send(True)
    done.close()


def call(function: Callable[..., Any], *args: Any, on_message: Callable[[Any], None] | None = None) -> Any:
    """`function(*args)` in a forked child; its return value, or ChildDied.

    With `on_message`, the child's function is called as `function(post, *args)`, and whatever it
    `post`s reaches `on_message` here while it runs (a build's progress).

    The call and its answer (a model and an engine: tens of MB) travel through two memory files
    (memfd) rather than pipes: 45 MB each way took 250 ms through multiprocessing's pipes on a
    2-core machine, as long as some builds."""
    context = _context()
    inbox = os.memfd_create("farm-isolated-call")
    outbox = os.memfd_create("farm-isolated-answer")
    receive, send = context.Pipe(duplex=False)
    messages = context.SimpleQueue() if on_message is not None else None
    relay = None
    try:
        _write(inbox, (function, args))
        child = context.Process(target=_child, args=(_Fd(inbox), _Fd(outbox), send, messages, dict(os.environ)), daemon=True)
        child.start()
        send.close()  # ours: once the child's end closes too, recv() raises EOFError instead of waiting forever
        if messages is not None and on_message is not None:
            relay = threading.Thread(target=_relay, args=(messages, on_message), daemon=True)
            relay.start()
        try:
            receive.recv()
        except EOFError:
            child.join()
            raise ChildDied(child.exitcode) from None
        child.join()
        return _read(outbox)
    finally:
        send.close()
        receive.close()
        if messages is not None:
            messages.put(_DONE)
        if relay is not None:
            relay.join()
        os.close(inbox)
        os.close(outbox)


def _relay(messages: Any, on_message: Callable[[Any], None]) -> None:
    while (message := messages.get()) != _DONE:
        on_message(message)
