"""The Ray fan-out: the pipeline of docs/architecture.md, one stage at a time as jobs become ready.

    spec --expand--> jobs
    export (per model) -> reference (fp32 outputs on the held-out rows)
                       -> calibrate (per method, on the calibration rows) -> variant (per precision x method)
                       -> build (per variant x backend x options x target)
                       -> benchmark (per batch size, exclusive use of the device), fidelity (against the reference)

`run_sweep` probes the cluster, expands the spec, and runs the jobs: farm.run.schedule says which
job is ready, farm.run.stages how each stage submits its job and turns the result into a row, and
the store records each result the moment it arrives. A job whose
key already finished is read back, not redone (unless its stage is in `redo`); a failed job is recorded with its error and
log, its dependants are marked blocked, and everything else goes on. Before a job is submitted it is leased in the
store (farm.store.leases): a job another driver of the same store holds is not run here, its row is awaited.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.exceptions import RayError, TaskCancelledError
from ray.util.queue import Queue
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from farm.run import cluster, isolated, tasks
from farm.run.jobs import DataRef, Job, Plan, TargetGroup
from farm.run.input_changes import input_changes, recorded_spec
from farm.run.plan import expand, same_targets
from farm.run.schedule import Event, Placement, Schedule
# check_inputs: files the spec names that cannot serve fail the sweep before Ray starts
from farm.run.spec.checks import check_inputs
from farm.run.spec.errors import SpecError
from farm.run.spec.schema import SweepSpec
from farm.run.stages import BuildJob, Produced, Stage, registry
from farm.store import schema
from farm.store.db import Store
from farm.store.record import Claim, Recorder
from workers.calibration import CalibrationDataError, Samples, load_inputs, load_labels
from workers.structs import Preprocess

NODE_LOOK_S = 5.0  # how often the driver looks for nodes that died or joined
WAIT_LOOK_S = 1.0  # how often it looks for the rows of jobs other drivers hold (one query for all of them)

# Events the driver reports while it runs: (stage, state, job, error); state is done|cached|failed|blocked.
Listener = Callable[[str, str, Job, str | None], None]
# A build's progress as its builder reports it (TensorRT's IProgressMonitor): (job, phase, steps done, steps).
BuildProgress = Callable[[Job, str, int, int], None]


@dataclass
class SweepResult:
    sweep_id: int
    plan: Plan
    states: dict[str, str] = field(default_factory=dict)  # job key -> final state
    errors: dict[str, str] = field(default_factory=dict)  # job key -> one-line error

    def count(self, stage: str, state: str) -> int:
        return sum(1 for j in self.plan.by_stage(stage) if self.states.get(j.key) == state)

    @property
    def failed(self) -> int:
        return sum(1 for state in self.states.values() if state == "failed")

    @property
    def rejected(self) -> int:
        return sum(1 for state in self.states.values() if state == "rejected")


def run_sweep(
    spec: SweepSpec,
    base: Path,
    spec_path: str,
    store: Store,
    *,
    address: str | None = None,
    redo: Collection[str] = (),
    listener: Listener | None = None,
    on_plan: Callable[[Plan, list[TargetGroup]], None] | None = None,
    on_build_progress: BuildProgress | None = None,
) -> SweepResult:
    # A job's row written from now on by another driver sharing the store answers this sweep's job (leases)
    since = datetime.now(UTC)
    # `farm sweep` has called the factories before it made the store; a caller of run_sweep meets a factory's
    # mistake in its export job instead of paying a second interpreter here
    check_inputs(spec, base, spec_path, call_factories=False)
    recorder = Recorder(store)
    address = address or os.environ.get("RAY_ADDRESS")
    local: tuple[list[TargetGroup], Plan] | None = None  # planned before Ray started, for this machine's targets
    if not redo and not address:
        # On this machine alone the probe is this process's own look at it: if every job of the plan
        # already finished, the answer is in the store and no Ray needs to start.
        groups = cluster.local_targets(spec.rtx_targets())
        plan = _expand(spec, base, groups, spec_path)
        settled = settled_states(plan, stored_answers(plan, recorder))
        if plan.jobs and settled is not None:
            recorded = _with_changes(spec, plan, recorder)
            if on_plan:
                on_plan(plan, groups)
            return _answered_from_store(spec_path, recorded, plan, recorder, listener, settled)
        local = (groups, plan)
    cluster.connect(address, cluster.ray_log_file(store.location.data_dir))
    nodes = cluster.probe()
    groups = cluster.group_targets(nodes, spec.rtx_targets())
    # The local Ray is this machine, so its probe mostly finds the targets planned for above: that plan stands.
    # A Ray this process joined already (started with other resources) may differ: then it is planned for.
    plan = local[1] if local is not None and same_targets(local[0], groups) else _expand(spec, base, groups, spec_path)
    recorded = _with_changes(spec, plan, recorder)
    if on_plan:
        on_plan(plan, groups)
    if not redo and plan.jobs and (settled := settled_states(plan, stored_answers(plan, recorder))):
        # a cluster joined (or a local Ray that planned otherwise) with nothing to do: a re-run, as above
        return _answered_from_store(spec_path, recorded, plan, recorder, listener, settled)
    recorder.save_targets(_target_rows(groups, nodes))
    sweep_id = recorder.start_sweep(spec.name, spec_path, recorded, ((j.stage, j.key, j.label) for j in plan.jobs))
    run = SweepRun(spec, plan, groups, {n.node_id: n for n in nodes}, recorder, sweep_id, listener, on_build_progress, since)
    try:
        run.execute(frozenset(redo))
    except BaseException:
        recorder.finish_sweep(sweep_id, "interrupted")
        raise
    recorder.finish_sweep(sweep_id, "finished")
    return SweepResult(sweep_id, plan, run.schedule.states, run.schedule.errors)


def _expand(spec: SweepSpec, base: Path, groups: list[TargetGroup], spec_path: str) -> Plan:
    """The plan; a spec the cluster cannot serve is one line that names the spec's file."""
    try:
        return expand(spec, base, groups)
    except SpecError as exc:
        raise SpecError(f"{spec_path}: {exc}") from None


def _with_changes(spec: SweepSpec, plan: Plan, recorder: Recorder) -> dict[str, Any]:
    """The spec as this sweep stores it; the plan learns which models' inputs changed since the last sweep of it."""
    recorded = recorded_spec(spec, plan)
    plan.changes = input_changes(recorder, spec.name, plan, recorded)
    return recorded


def stored_answers(plan: Plan, recorder: Recorder) -> dict[str, str]:
    """Job key -> the status of its stored row (ok or rejected), leaving out ok rows whose artifact file is gone."""
    jobs = [(j.stage, j.key) for j in plan.jobs]
    gone = recorder.missing_artifacts(jobs)
    return {key: status for key, status in recorder.statuses(jobs).items() if key not in gone}


def below(jobs: Iterable[Job], roots: set[str]) -> set[str]:
    """The keys of `roots` and of every job that needs one of them, at any depth (`jobs` in pipeline order)."""
    found = set(roots)
    for job in jobs:
        if any(parent in found for parent in job.needs):
            found.add(job.key)
    return found


def settled_states(plan: Plan, statuses: dict[str, str]) -> dict[str, str] | None:
    """Each job's state when the store already answers the whole plan: "cached" (an ok row), "rejected" (a
    row judged not viable), "skipped" (below a rejection); None when some job still has work to do."""
    states: dict[str, str] = {}
    for job in plan.jobs:  # parents come before their children
        status = statuses.get(job.key)
        if status in ("ok", "rejected"):
            states[job.key] = "cached" if status == "ok" else "rejected"
        elif not job.runs_after_failures and any(states.get(parent) in ("rejected", "skipped") for parent in job.needs):
            states[job.key] = "skipped"
        else:
            return None
    return states


def _answered_from_store(spec_path: str, recorded: dict[str, Any], plan: Plan, recorder: Recorder, listener: Listener | None,
                         states: dict[str, str]) -> SweepResult:
    """A sweep whose every job already finished (or was judged), without starting Ray. A re-run of a sweep of the
    same jobs counts on that sweep (the newest sweep stays the newest that did work, and its answer is this one);
    other jobs (another spec's, a subset) are recorded as a sweep of their own, in which nothing ran."""
    reasons = {job.key: recorder.error(job.stage, job.key) if states[job.key] == "rejected" else None for job in plan.jobs}
    sweep_id = recorder.rerun_of(recorded["name"], ((j.stage, j.key) for j in plan.jobs))
    if sweep_id is None:
        sweep_id = recorder.start_sweep(recorded["name"], spec_path, recorded, ((j.stage, j.key, j.label) for j in plan.jobs),
                                        state="cached")
        for job in plan.jobs:
            if states[job.key] != "cached":
                recorder.mark(sweep_id, job.stage, job.key, states[job.key],
                              reasons[job.key] or "nothing to do: an upstream job was rejected")
        recorder.finish_sweep(sweep_id, "finished")
    if listener:
        for job in plan.jobs:
            listener(job.stage, states[job.key], job, reasons[job.key])
    return SweepResult(sweep_id, plan, states)


def _target_rows(groups: list[TargetGroup], nodes: list[cluster.Node]) -> list[schema.Target]:
    """One row per target, with the probe of its first node as the description."""
    devices = {n.node_id: n.device for n in nodes}
    return [schema.Target(id=g.target.id, kind=g.target.kind, name=g.target.name, compute_capability=g.target.compute_capability,
                          description=asdict(devices[g.nodes[0]])) for g in groups]


class SweepRun:
    """One sweep's jobs through Ray: what farm.run.stages asks of a running sweep (the `Context`)."""

    def __init__(
        self,
        spec: SweepSpec,
        plan: Plan,
        groups: list[TargetGroup],
        nodes: dict[str, cluster.Node],
        recorder: Recorder,
        sweep_id: int,
        listener: Listener | None = None,
        on_build_progress: BuildProgress | None = None,
        since: datetime | None = None,
    ) -> None:
        self.spec = spec
        self.since = since or datetime.now(UTC)  # rows written from then on by other drivers answer this sweep's jobs
        self.recorder = recorder
        self.sweep_id = sweep_id
        self.listener = listener
        self.on_build_progress = on_build_progress
        self.nodes = nodes
        self.groups = {g.target.id: g for g in groups}
        self.stages: dict[str, Stage[Any]] = registry()
        self.placement = Placement(groups, {n.node_id: (n.device.host_id or n.device.hostname, n.cpus) for n in nodes.values()},
                                   patience_s=spec.limits.timing_patience_s)
        # Submit no more than the cluster can run at once, so a job's timeout clock starts near its start.
        self.schedule = Schedule(plan.jobs, max_inflight=int(sum(n.cpus for n in nodes.values())), timeout_s=spec.limits.job_timeout_s,
                                 placement=self.placement)
        self._moves: dict[str, int] = {}  # job key -> times its node died under it
        self._next_look = time.monotonic() + NODE_LOOK_S
        self._waiting: dict[str, Job] = {}  # job key -> a job another driver holds the lease of
        self._next_wait_look = 0.0
        # Builders that report progress (TensorRT) send it here; the driver drains it while it waits.
        reports_progress = on_build_progress is not None and any(
            isinstance(j, BuildJob) and j.request.backend == "tensorrt" for j in plan.jobs
        )
        self.progress_queue: Queue | None = Queue(maxsize=1000) if reports_progress else None
        self._produced: dict[str, Produced] = {}
        self._remade: dict[str, dict[str, str]] = {}  # a job run again for a missing artifact -> what its old row named
        self._undecided: set[str] = set()  # jobs below those: read back, or run again where a job above changed
        self._changed: set[str] = set()  # jobs run again whose result differs from the row they replaced
        self._inflight: dict[ray.ObjectRef, Job] = {}
        self._blob_refs: dict[str, ray.ObjectRef] = {}
        self._row_refs: dict[str, tuple[ray.ObjectRef, ray.ObjectRef | None]] = {}
        self._loaded: dict[tuple[Path, Preprocess, tuple[int, ...]], Samples] = {}

    # --- the loop -----------------------------------------------------------------------

    def execute(self, redo: frozenset[str] = frozenset()) -> None:
        """Run every job of the plan; one of a stage not in `redo` that already finished is read back.

        An ok row whose artifact file is gone (deleted by hand, a disk) is no answer: its job runs again and
        mends the store. The jobs below it are read back only where it made the same bytes again (`_start`)."""
        gone = self.recorder.missing_artifacts([(j.stage, j.key) for j in self.schedule.jobs.values() if j.stage not in redo])
        for key in gone:
            stage = self.schedule.jobs[key].stage
            if (old := self.recorder.finished(stage, key)) is not None:
                self._remade[key] = self.stages[stage].produced(old).blobs
        self._undecided = below(self.schedule.jobs.values(), gone) - gone
        for key, job in self.schedule.jobs.items():
            if job.stage in redo or key in self.schedule.states or key in gone or key in self._undecided:
                continue  # skipped below a rejection read back just before; or waiting on a job made again
            # a rejection was judged with these inputs: not tried again
            if (row := self.recorder.finished(job.stage, key) or self.recorder.rejected(job.stage, key)) is not None:
                self._answered(job, row)
        while not self.schedule.finished:
            self.recorder.heartbeat(self.sweep_id)  # throttled in the recorder; readers call a silent driver gone
            start, ended = self.schedule.advance()
            for event in ended:
                if event.state == "failed":  # no node of its target is left: a row says so
                    self._record(event.job, tasks.Outcome(False, error=event.error))
                else:
                    self._report(event)
            for job, _node in start:
                self._start(job)
            self._look_at_nodes()
            self._look_at_waits()
            if not self._inflight:
                if not start and not ended:
                    time.sleep(0.2)  # waiting for a node (a timing holds its host, or one may join)
                continue
            done, _ = ray.wait(list(self._inflight), num_returns=1, timeout=0.5)
            self._drain_progress()
            for ref in done:
                self._collect(self._inflight.pop(ref), ref)
            overdue = set(self.schedule.overdue())
            for ref, job in self._inflight.items():
                if job.key in overdue:
                    ray.cancel(ref, force=True)
        self._blob_refs.clear()
        self._row_refs.clear()
        self._loaded.clear()
        if self.progress_queue is not None:
            self.progress_queue.shutdown()

    def _start(self, job: Job) -> None:
        if job.key in self._undecided and not self._changed.intersection(job.needs):
            # what it used was made again byte for byte: its stored row still answers it
            if (row := self.recorder.finished(job.stage, job.key) or self.recorder.rejected(job.stage, job.key)) is not None:
                self._answered(job, row)
                return
        node = self.placement.assigned.get(job.key, "")
        claim = self.recorder.claim(self.sweep_id, job.stage, job.key, self._node_name(node), self.since)
        if not claim.ours:
            self._wait_or_take(job, claim)
            return
        try:
            submitted = self.stages[job.stage].submit(self, job)
        except Exception as exc:  # e.g. input data that cannot be read: the job fails, the sweep goes on
            submitted = tasks.Outcome(False, error=f"{type(exc).__name__}: {exc}")
        if isinstance(submitted, tasks.Outcome):
            self._record(job, submitted)
        else:
            self._inflight[submitted] = job

    def _wait_or_take(self, job: Job, claim: Claim) -> None:
        """A job this driver did not get the lease of: another driver's row answers it, or it is awaited
        (off its node, so this driver's other jobs use it), or, free again, it goes back in line to be claimed."""
        if claim.answer is not None:
            self._waiting.pop(job.key, None)
            self._answered(job, claim.answer)
        elif claim.holder is not None:
            self._waiting[job.key] = job
            self.schedule.set_aside(job.key)
        else:
            self._waiting.pop(job.key, None)
            self.schedule.retry(job.key)

    def _look_at_waits(self) -> None:
        """Every WAIT_LOOK_S while jobs are awaited: one look at their rows and leases for all of them."""
        if not self._waiting or time.monotonic() < self._next_wait_look:
            return
        self._next_wait_look = time.monotonic() + WAIT_LOOK_S
        found = self.recorder.look_again([(j.stage, j.key) for j in self._waiting.values()], self.since)
        for key, claim in found.items():
            if claim.holder is None:  # answered, or let go of: either way no longer awaited
                self._wait_or_take(self._waiting[key], claim)

    def _answered(self, job: Job, row: schema.JobColumns) -> None:
        """A job the store answers without running it here: an earlier sweep's row (ok or rejected), or one another
        driver wrote while this sweep waited on it (then a failure too: that driver's failure, reported, not redone)."""
        if row.status == "ok":
            self._produced[job.key] = self.stages[job.stage].produced(row)
            self._report(self.schedule.finish(job.key, "cached"))
            return
        state = "rejected" if row.status == "rejected" else "failed"
        error = row.error if state == "rejected" else f"failed in another driver's sweep: {row.error}"
        self.recorder.mark(self.sweep_id, job.stage, job.key, state, error)
        self._report(self.schedule.finish(job.key, state, error))

    def _collect(self, job: Job, ref: ray.ObjectRef) -> None:
        try:
            outcome: tasks.Outcome = ray.get(ref)
        except TaskCancelledError:
            outcome = tasks.Outcome(False, error=f"timed out after {self.spec.limits.job_timeout_s:.0f} s")
        except RayError as exc:  # the worker process died (a native crash, OOM) after its retries, or its node did
            node = self.placement.assigned.get(job.key, "")
            if node and node not in cluster.alive_nodes():
                self.placement.node_died(node)
                if self._moves.get(job.key, 0) < self.spec.limits.retries:
                    self._moves[job.key] = self._moves.get(job.key, 0) + 1
                    self.schedule.retry(job.key)  # onto another node of its target, or failed at once if none is left
                    return
                outcome = tasks.Outcome(False, error=f"node {node[:12]} died while running this job ({type(exc).__name__}), "
                                                     f"{self._moves.get(job.key, 0)} time(s) already", log=str(exc))
            elif isinstance(cause := getattr(exc, "cause", None), isolated.ChildDied):  # an isolated build's process
                outcome = tasks.Outcome(False, error=f"{cause} while building ({self.spec.limits.retries + 1} tries)", log=str(exc))
            else:
                outcome = tasks.Outcome(False, error=f"{type(exc).__name__}: worker failed after retries (its process died: out of memory "
                                                     "or a native crash; the log has Ray's account)", log=str(exc))
        self._record(job, outcome)

    def _look_at_nodes(self) -> None:
        """Every few seconds: nodes that died stop getting work; nodes that joined, once probed, take
        the pending jobs of the targets they serve (with the same backend versions)."""
        if time.monotonic() < self._next_look:
            return
        self._next_look = time.monotonic() + NODE_LOOK_S
        alive = cluster.alive_nodes()
        for node_id in [n for n, slot in self.placement.slots.items() if slot.alive and n not in alive]:
            self.placement.node_died(node_id)
        for node in cluster.probe(timeout_s=30, known=set(self.placement.slots)):
            self.nodes[node.node_id] = node
            serves = [g.target.id for g in cluster.group_targets([node], self.spec.rtx_targets())
                      if g.target.id in self.groups and all(g.backends.get(k) == v for k, v in self.groups[g.target.id].backends.items())]
            self.placement.add_node(node.node_id, node.device.host_id or node.device.hostname, node.cpus, serves)

    def _record(self, job: Job, outcome: tasks.Outcome) -> None:
        stage = self.stages[job.stage]
        stage.after(self, job, outcome)
        blobs = self.recorder.put_blobs(outcome.blobs, stage.kinds())
        row = self.recorder.record(self.sweep_id, stage.row(job, outcome, blobs), blobs.values())
        if (job.key in self._remade or job.key in self._undecided) and not (
                outcome.ok and self._remade.get(job.key) == stage.produced(row).blobs):
            self._changed.add(job.key)  # the jobs below it that used its old result run again
        if outcome.ok:
            self._produced[job.key] = stage.produced(row)
            self._report(self.schedule.finish(job.key, "done"))
        elif outcome.rejected:
            self._report(self.schedule.finish(job.key, "rejected", outcome.error))
        else:
            self._report(self.schedule.finish(job.key, "failed", outcome.error))

    def _report(self, event: Event) -> None:
        if event.state in ("blocked", "cached", "skipped"):  # done, failed and rejected were marked with their row
            self.recorder.mark(self.sweep_id, event.job.stage, event.job.key, event.state, event.error)
        if self.listener:
            self.listener(event.job.stage, event.state, event.job, event.error)

    def _drain_progress(self) -> None:
        if self.progress_queue is None or self.on_build_progress is None:
            return
        while not self.progress_queue.empty():
            key, phase, done, total = self.progress_queue.get_nowait()
            if key in self.schedule.jobs:
                self.on_build_progress(self.schedule.jobs[key], phase, done, total)

    # --- what stages ask for (farm.run.stages.Context) --------------------------------------

    def job(self, key: str) -> Job:
        return self.schedule.jobs[key]

    def produced(self, key: str) -> Produced:
        return self._produced[key]

    def finished(self, key: str) -> Produced | None:
        return self._produced.get(key)

    def _node_name(self, node: str) -> str:
        """What a person reads of a Ray node: its host name and the start of its id."""
        found = self.nodes.get(node)
        return f"{found.device.hostname} {node[:8]}" if found is not None else node[:8]

    def pin(self, job: Job) -> dict[str, Any]:
        return {"scheduling_strategy": NodeAffinitySchedulingStrategy(self.placement.assigned[job.key], soft=False)}

    def timing_resources(self, job: Job) -> dict[str, Any]:
        if job.target_id is not None and self.groups[job.target_id].target.kind == "gpu":
            return {"num_gpus": 1, "num_cpus": 1}
        return {"num_cpus": max(1.0, self.nodes[self.placement.assigned[job.key]].cpus)}

    def blob(self, sha256: str) -> ray.ObjectRef:
        if sha256 not in self._blob_refs:
            self._blob_refs[sha256] = ray.put(self.recorder.store.artifacts.get(sha256))
        return self._blob_refs[sha256]

    def rows(self, data: DataRef) -> tuple[ray.ObjectRef, ray.ObjectRef | None]:
        """The rows a stage uses, loaded once per sweep: (inputs, labels or None)."""
        if data.digest not in self._row_refs:
            source = (data.path, data.preprocess, data.input_shape)
            if source not in self._loaded:  # calibration and held-out rows often come from one folder
                self._loaded[source] = load_inputs(*source)
            array, labels = load_rows(data, self._loaded[source])
            self._row_refs[data.digest] = (ray.put(array), ray.put(labels) if labels is not None else None)
        return self._row_refs[data.digest]


def load_rows(data: DataRef, samples: Samples | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Calibration rows from the front of the data, held-out rows from its end: never the same rows."""
    samples = samples if samples is not None else load_inputs(data.path, data.preprocess, data.input_shape)
    if len(samples) < data.count + data.reserved:
        raise CalibrationDataError(
            f"{data.path}: {len(samples)} usable samples, {data.count + data.reserved} needed "
            f"({data.count} {data.part}" + (f" + {data.reserved} for the other part)" if data.reserved else ")")
        )
    rows = slice(0, data.count) if data.part == "calibration" else slice(len(samples) - data.count, len(samples))
    labels = load_labels(data.labels, samples.files) if data.labels else None
    kept = np.array([name not in data.excluded for name in samples.files[rows]], dtype=bool)  # copies of calibration images go
    return samples.array[rows][kept], labels[rows][kept] if labels is not None else None
