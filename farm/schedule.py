"""Which job runs next, and where: the sweep's bookkeeping without Ray, so it can be tested alone.

`Schedule` holds each job's state (pending, running, done, cached, failed, blocked), starts a
job once every parent is done or cached and fewer than `max_inflight` jobs run, blocks the
dependants of a failure, and says which running jobs have overrun their timeout. `Placement`
spreads the jobs of a target over its nodes. farm.driver executes both through Ray.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from farm.jobs import Job, TargetGroup

FINISHED = ("done", "cached")
FAILED = ("failed", "blocked")


@dataclass(frozen=True)
class Event:
    job: Job
    state: str  # done | cached | failed | blocked
    error: str | None = None


class Schedule:
    def __init__(self, jobs: Iterable[Job], *, max_inflight: int, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.jobs = {job.key: job for job in jobs}
        self.max_inflight = max(1, max_inflight)
        self.timeout_s = timeout_s
        self.clock = clock
        self.states: dict[str, str] = {}
        self.errors: dict[str, str] = {}
        self.started: dict[str, float] = {}  # running job key -> when it started
        self._pending = list(self.jobs)  # pipeline order: parents before children

    @property
    def running(self) -> int:
        return len(self.started)

    @property
    def finished(self) -> bool:
        return not self._pending and not self.started

    def finish(self, key: str, state: str, error: str | None = None) -> Event:
        """Record how a job ended (or that an earlier sweep already finished it: "cached")."""
        self.started.pop(key, None)
        if key in self._pending:
            self._pending.remove(key)
        self.states[key] = state
        if error:
            self.errors[key] = error
        return Event(self.jobs[key], state, error)

    def advance(self) -> tuple[list[Job], list[Event]]:
        """The jobs to start now (marked running), and the jobs that can never run (now blocked).

        Pending jobs are visited in pipeline order, so a failure blocks its whole subtree in one pass.
        """
        start: list[Job] = []
        blocked: list[Event] = []
        still: list[str] = []
        for key in self._pending:
            job = self.jobs[key]
            upstream = [self.states.get(parent) for parent in job.needs]
            if job.runs_after_failures:
                if all(state in FINISHED + FAILED for state in upstream) and self.running < self.max_inflight:
                    self.started[key] = self.clock()
                    start.append(job)
                else:
                    still.append(key)
            elif any(state in FAILED for state in upstream):
                self.states[key] = "blocked"
                self.errors[key] = "an upstream job failed"
                blocked.append(Event(job, "blocked", self.errors[key]))
            elif all(state in FINISHED for state in upstream) and self.running < self.max_inflight:
                self.started[key] = self.clock()
                start.append(job)
            else:
                still.append(key)
        self._pending = still
        return start, blocked

    def overdue(self) -> list[str]:
        """Running jobs older than the timeout, measured from their start."""
        now = self.clock()
        return [key for key, since in self.started.items() if now - since > self.timeout_s]

    def count(self, stage: str, state: str) -> int:
        return sum(1 for key, job in self.jobs.items() if job.stage == stage and self.states.get(key) == state)


class Placement:
    """Round robin over each target's nodes, so the jobs of one target spread over all of them."""

    def __init__(self, groups: Iterable[TargetGroup]) -> None:
        self._cycles: dict[str, Iterator[str]] = {g.target.id: itertools.cycle(g.nodes) for g in groups}

    def next_node(self, target_id: str) -> str:
        return next(self._cycles[target_id])
