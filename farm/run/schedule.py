"""Which job runs next, and where: the sweep's bookkeeping without Ray, so it can be tested alone.

`Schedule` holds each job's state (pending, running, done, cached, rejected, failed, blocked, skipped), starts a
job once every parent is done or cached and fewer than `max_inflight` jobs run, blocks the
dependants of a failure, and says which running jobs have overrun their timeout. `Placement`
spreads the jobs of a target over its nodes. farm.run.driver executes both through Ray.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from farm.run.jobs import Job, TargetGroup

FINISHED = ("done", "cached")
FAILED = ("failed", "blocked")
# A job judged not viable ("rejected", a finding) leaves its dependants nothing to work on: they are
# "skipped", which, unlike "blocked", is no failure of the sweep.
SETTLED = ("rejected", "skipped")


@dataclass(frozen=True)
class Event:
    job: Job
    state: str  # done | cached | rejected | failed | blocked | skipped
    error: str | None = None


class Schedule:
    """The jobs' states, kept so that each turn of the driver costs what it starts, not the size of the plan.

    A job waits on a count of its unfinished parents and enters the ready queue of its (target,
    timing or not) when the count reaches zero; a failure blocks its subtree the moment it is
    recorded. `advance` takes ready jobs in pipeline order across the queues and closes a queue for
    the turn at the first job the placement cannot start (the next of that queue could not start
    either), so 10,000 pending jobs cost no more per turn than ten.
    """

    def __init__(self, jobs: Iterable[Job], *, max_inflight: int, timeout_s: float, clock: Callable[[], float] = time.monotonic,
                 placement: Placement | None = None) -> None:
        self.jobs = {job.key: job for job in jobs}
        self.placement = placement
        self.max_inflight = max(1, max_inflight)
        self.timeout_s = timeout_s
        self.clock = clock
        self.states: dict[str, str] = {}
        self.errors: dict[str, str] = {}
        self.started: dict[str, float] = {}  # running job key -> when it started
        self._order = {key: i for i, key in enumerate(self.jobs)}  # pipeline order: parents before children
        self._pending = set(self.jobs)  # neither running nor ended
        self._waiting_on = {key: len(job.needs) for key, job in self.jobs.items()}  # parents not yet ended
        self._children: dict[str, list[str]] = {}
        for key, job in self.jobs.items():
            for parent in job.needs:
                self._children.setdefault(parent, []).append(key)
        self._ready: dict[tuple[str | None, bool], list[tuple[int, int, str]]] = {}  # queue -> heap of (first?, order, key)
        self._ready_since: dict[str, float] = {}  # ready job key -> when its last parent ended
        self._ended: list[Event] = []  # blocked by a failure since the last turn
        self._aside: set[str] = set()  # started, then found leased by another driver: its result is awaited
        for key in self.jobs:
            if self._waiting_on[key] == 0:
                self._enqueue(key)

    @property
    def running(self) -> int:
        return len(self.started)

    @property
    def finished(self) -> bool:
        """Nothing left to start, run or report (jobs a failure blocked are reported by the next `advance`)."""
        return not self._pending and not self.started and not self._ended and not self._aside

    def _enqueue(self, key: str, first: bool = False) -> None:
        job = self.jobs[key]
        queue = (job.target_id, job.stage in TIMING_STAGES)
        self._ready_since[key] = self.clock()
        heapq.heappush(self._ready.setdefault(queue, []), (0 if first else 1, self._order[key], key))

    def _end(self, key: str, state: str, error: str | None) -> Event:
        """A job reached its final state: its children learn of it."""
        self._pending.discard(key)
        self._aside.discard(key)
        self._ready_since.pop(key, None)
        self.states[key] = state
        if error:
            self.errors[key] = error
        self._tell_children(key, state)
        return Event(self.jobs[key], state, error)

    def _tell_children(self, key: str, state: str) -> None:
        """A failure blocks the subtree below it now (reported by the next `advance`, parents first);
        otherwise a child whose last parent ended becomes ready."""
        for child in self._children.get(key, ()):
            if child not in self._pending:
                continue
            if state in FAILED + SETTLED and not self.jobs[child].runs_after_failures:
                self._pending.discard(child)
                ended = "blocked" if state in FAILED else "skipped"
                why = self.errors.get(key) if state == "skipped" else None
                self.states[child] = ended
                self.errors[child] = ("an upstream job failed" if ended == "blocked"
                                      else why or f"nothing to do: its {self.jobs[key].stage} was rejected ({self.errors.get(key, '')})")
                self._ended.append(Event(self.jobs[child], ended, self.errors[child]))
                self._tell_children(child, ended)
                continue
            self._waiting_on[child] -= 1
            if self._waiting_on[child] == 0:
                self._enqueue(child)

    def finish(self, key: str, state: str, error: str | None = None) -> Event:
        """Record how a job ended (or that an earlier sweep already finished it: "cached")."""
        self._free(key)
        return self._end(key, state, error)

    def advance(self) -> tuple[list[tuple[Job, str | None]], list[Event]]:
        """The jobs to start now (marked running) with the node each goes to (None without a
        placement), and the jobs that can never run (blocked, or failed: no node of their target left)."""
        placement = self.placement
        if placement is not None:
            placement.new_round()
        start: list[tuple[Job, str | None]] = []
        ended, self._ended = self._ended, []
        now = self.clock()
        heads = [(heap[0], queue) for queue, heap in self._ready.items() if heap]
        heapq.heapify(heads)
        while heads and self.running < self.max_inflight:
            (_first, _order, key), queue = heapq.heappop(heads)
            heap = self._ready[queue]
            if key not in self._pending:  # cached, blocked or started since it was queued
                heapq.heappop(heap)
            else:
                job = self.jobs[key]
                try:
                    node = placement.choose(job, waited_s=now - self._ready_since[key]) if placement is not None else None
                except NoLiveNode as exc:
                    heapq.heappop(heap)
                    ended.append(self._end(key, "failed", str(exc)))
                    ended, self._ended = ended + self._ended, []
                else:
                    if placement is not None and node is None:
                        continue  # its nodes are busy (or held for a timing): this queue waits for the next turn
                    heapq.heappop(heap)
                    self._pending.discard(key)
                    del self._ready_since[key]
                    self.started[key] = now
                    if placement is not None and node is not None:
                        placement.start(job, node)
                    start.append((job, node))
            if heap:
                heapq.heappush(heads, (heap[0], queue))
        return start, ended

    def retry(self, key: str) -> None:
        """Put a job that was running back in line (its node died), or one set aside (its other driver let go of
        it): it goes first."""
        self._free(key)
        self._aside.discard(key)
        self._pending.add(key)
        self._enqueue(key, first=True)

    def set_aside(self, key: str) -> None:
        """A started job that another driver runs: it gives its node back and leaves the count in flight, but
        stays unfinished until `finish` (its result came) or `retry` (the other driver let go of it)."""
        self._free(key)
        self._aside.add(key)

    def _free(self, key: str) -> None:
        if self.started.pop(key, None) is not None and self.placement is not None:
            self.placement.finish(self.jobs[key])

    def overdue(self) -> list[str]:
        """Running jobs older than the timeout, measured from their start."""
        now = self.clock()
        return [key for key, since in self.started.items() if now - since > self.timeout_s]

    def count(self, stage: str, state: str) -> int:
        return sum(1 for key, job in self.jobs.items() if job.stage == stage and self.states.get(key) == state)


TIMING_STAGES = ("benchmark", "retime")  # jobs that measure time: each holds its whole host


class NoLiveNode(RuntimeError):
    """Every node of a job's target is gone (or there never was one): the job fails at once, never pends."""


@dataclass
class NodeSlot:
    node_id: str
    host: str  # the physical machine (workers.device.host_id): Ray nodes and containers on one host share it
    capacity: int  # jobs at once: its CPUs (a head started with --num-cpus=0 takes none)
    running: int = 0
    alive: bool = True
    started: int = 0  # jobs it was given so far: spreads ties over the nodes


class Placement:
    """Which node runs each job: one of the job's target (any node for target-free stages), the least
    busy, never past its CPUs; and the host rule that keeps timings honest. A timing (benchmark,
    re-timing) starts only on a host where nothing else runs and holds it while it runs.

    A ready timing first lets its hosts run the other work they have (builds, fidelity), up to
    `patience_s`: emptying a host for a timing idles its other CPUs until its longest job ends,
    and a timing taken as soon as it is ready costs such a drain for every engine, where
    timings taken in a row, once the host has no other work, cost one. Past `patience_s` its hosts
    take no new work, so a stream of builds never starves timings."""

    def __init__(self, groups: Iterable[TargetGroup], nodes: dict[str, tuple[str, float]], patience_s: float = 0.0) -> None:
        self.slots = {node: NodeSlot(node, host, int(cpus)) for node, (host, cpus) in nodes.items()}
        self.targets: dict[str, list[str]] = {g.target.id: list(g.nodes) for g in groups}
        self.assigned: dict[str, str] = {}  # running job key -> node id
        self._timing: dict[str, int] = {}  # host -> timings running there
        self._busy: dict[str, int] = {}  # host -> jobs of any kind running there
        self._waiting: set[str] = set()  # hosts a timing waits for
        self.patience_s = patience_s

    def nodes_of(self, job: Job) -> list[NodeSlot]:
        target = job.target_id
        ids = self.targets.get(target, []) if target is not None else list(self.slots)
        return [self.slots[n] for n in ids if n in self.slots]

    def choose(self, job: Job, waited_s: float = 0.0) -> str | None:
        """A node for `job` (ready for `waited_s`) now, or None to wait; NoLiveNode when its target has none left."""
        live = [slot for slot in self.nodes_of(job) if slot.alive and slot.capacity > 0]
        if not live:
            raise NoLiveNode(f"no live node of target {job.target_id}" if job.target_id else "no live node in the cluster")
        timing = job.stage in TIMING_STAGES
        free = [slot for slot in live if slot.running < slot.capacity and
                (self._busy.get(slot.host, 0) == 0 if timing else not self._timing.get(slot.host) and slot.host not in self._waiting)]
        if not free:
            if timing and waited_s >= self.patience_s:  # drain the hosts this timing could use, so it gets one
                self._waiting |= {slot.host for slot in live}
            return None
        slot = min(free, key=lambda s: (self._busy.get(s.host, 0), s.running, s.started))  # the idlest host first
        if timing:
            self._waiting.discard(slot.host)
        return slot.node_id

    def new_round(self) -> None:
        """A new pass over the pending jobs: the timings still waiting say again which hosts they hold."""
        self._waiting.clear()

    def start(self, job: Job, node: str) -> None:
        slot = self.slots[node]
        slot.running += 1
        slot.started += 1
        self.assigned[job.key] = node
        self._busy[slot.host] = self._busy.get(slot.host, 0) + 1
        if job.stage in TIMING_STAGES:
            self._timing[slot.host] = self._timing.get(slot.host, 0) + 1

    def finish(self, job: Job) -> None:
        node = self.assigned.pop(job.key, None)
        if node is None:
            return
        slot = self.slots[node]
        slot.running -= 1
        self._busy[slot.host] -= 1
        if job.stage in TIMING_STAGES:
            self._timing[slot.host] -= 1

    def node_died(self, node: str) -> None:
        if node in self.slots:
            self.slots[node].alive = False

    def add_node(self, node: str, host: str, cpus: float, target_ids: Iterable[str]) -> list[str]:
        """A node that joined: it takes jobs of the targets it serves that the plan has. Returns those targets."""
        self.slots[node] = NodeSlot(node, host, int(cpus))
        joined = [t for t in target_ids if t in self.targets]
        for target in joined:
            self.targets[target].append(node)
        return joined

    def host_of(self, node: str) -> str:
        return self.slots[node].host
