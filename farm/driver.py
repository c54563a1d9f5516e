"""The Ray fan-out: the pipeline of docs/architecture.md, one stage at a time as jobs become ready.

    spec --expand--> jobs
    export (per model) -> reference (fp32 outputs on the held-out rows)
                       -> calibrate (per method, on the calibration rows) -> variant (per precision x method)
                       -> build (per variant x backend x options x target)
                       -> benchmark (per batch size, exclusive use of the device), fidelity (against the reference)

`run_sweep` probes the cluster, expands the spec, and runs the jobs: farm.schedule says which
job is ready, farm.stages how each stage submits its job and turns the result into a row, and
the store records each result the moment it arrives (the driver is the only writer). A job whose
key already finished is not redone (unless forced); a failed job is recorded with its error and
log, its dependants are marked blocked, and everything else goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.exceptions import RayError, TaskCancelledError
from ray.util.queue import Queue
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from farm import cluster, tasks
from farm.jobs import BuildJob, DataRef, Job, Plan, TargetGroup
from farm.plan import expand
from farm.schedule import Event, Placement, Schedule
# check_inputs: files the spec names that cannot serve fail the sweep before Ray starts
from farm.spec import SweepSpec, check_inputs
from farm.stages import Produced, Stage, registry
from farm.store import schema
from farm.store.db import Store
from farm.store.record import Recorder
from workers.calibration import CalibrationDataError, Samples, load_inputs, load_labels
from workers.structs import Preprocess

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


def run_sweep(
    spec: SweepSpec,
    base: Path,
    spec_path: str,
    store: Store,
    *,
    address: str | None = None,
    force: bool = False,
    listener: Listener | None = None,
    on_plan: Callable[[Plan, list[TargetGroup]], None] | None = None,
    on_build_progress: BuildProgress | None = None,
) -> SweepResult:
    check_inputs(spec, base, spec_path)
    cluster.connect(address)
    nodes = cluster.probe()
    groups = cluster.group_targets(nodes, spec.rtx_targets())
    plan = expand(spec, base, groups)
    if on_plan:
        on_plan(plan, groups)
    recorder = Recorder(store)
    recorder.save_targets(_target_rows(groups, nodes))
    sweep_id = recorder.start_sweep(spec.name, spec_path, spec.model_dump(mode="json"), ((j.stage, j.key, j.label) for j in plan.jobs))
    run = SweepRun(spec, plan, groups, {n.node_id: n for n in nodes}, recorder, sweep_id, listener, on_build_progress)
    try:
        run.execute(force)
    except BaseException:
        recorder.finish_sweep(sweep_id, "interrupted")
        raise
    recorder.finish_sweep(sweep_id, "finished")
    return SweepResult(sweep_id, plan, run.schedule.states, run.schedule.errors)


def _target_rows(groups: list[TargetGroup], nodes: list[cluster.Node]) -> list[schema.Target]:
    """One row per target, with the probe of its first node as the description."""
    devices = {n.node_id: n.device for n in nodes}
    return [schema.Target(id=g.target.id, kind=g.target.kind, name=g.target.name, compute_capability=g.target.compute_capability,
                          description=asdict(devices[g.nodes[0]])) for g in groups]


class SweepRun:
    """One sweep's jobs through Ray: what farm.stages asks of a running sweep (the `Context`)."""

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
    ) -> None:
        self.spec = spec
        self.recorder = recorder
        self.sweep_id = sweep_id
        self.listener = listener
        self.on_build_progress = on_build_progress
        self.nodes = nodes
        self.stages: dict[str, Stage] = registry()
        # Submit no more than the cluster can run at once, so a job's timeout clock starts near its start.
        self.schedule = Schedule(plan.jobs, max_inflight=int(sum(n.cpus for n in nodes.values())), timeout_s=spec.limits.job_timeout_s)
        self.placement = Placement(groups)
        # Builders that report progress (TensorRT) send it here; the driver drains it while it waits.
        reports_progress = on_build_progress is not None and any(
            isinstance(j, BuildJob) and j.request.backend == "tensorrt" for j in plan.jobs
        )
        self.progress_queue: Queue | None = Queue(maxsize=1000) if reports_progress else None
        self._produced: dict[str, Produced] = {}
        self._inflight: dict[ray.ObjectRef, Job] = {}
        self._blob_refs: dict[str, ray.ObjectRef] = {}
        self._row_refs: dict[str, tuple[ray.ObjectRef, ray.ObjectRef | None]] = {}
        self._loaded: dict[tuple[Path, Preprocess, tuple[int, ...]], Samples] = {}

    # --- the loop -----------------------------------------------------------------------

    def execute(self, force: bool = False) -> None:
        for key, job in self.schedule.jobs.items():
            if not force and (row := self.recorder.finished(job.stage, key)) is not None:
                self._produced[key] = self.stages[job.stage].produced(row)
                self._report(self.schedule.finish(key, "cached"))
        while not self.schedule.finished:
            self.recorder.heartbeat(self.sweep_id)  # throttled in the recorder; readers call a silent driver gone
            start, blocked = self.schedule.advance()
            for event in blocked:
                self._report(event)
            for job in start:
                self._start(job)
            if not self._inflight:
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
        try:
            submitted = self.stages[job.stage].submit(self, job)
        except Exception as exc:  # e.g. input data that cannot be read: the job fails, the sweep goes on
            submitted = tasks.Outcome(False, error=f"{type(exc).__name__}: {exc}")
        if isinstance(submitted, tasks.Outcome):
            self._record(job, submitted)
        else:
            self._inflight[submitted] = job

    def _collect(self, job: Job, ref: ray.ObjectRef) -> None:
        try:
            outcome: tasks.Outcome = ray.get(ref)
        except TaskCancelledError:
            outcome = tasks.Outcome(False, error=f"timed out after {self.spec.limits.job_timeout_s:.0f} s")
        except RayError as exc:  # the worker process died (a native crash, OOM) after its retries
            outcome = tasks.Outcome(False, error=f"{type(exc).__name__}: worker failed after retries (its process died: out of memory "
                                                 "or a native crash; the log has Ray's account)", log=str(exc))
        self._record(job, outcome)

    def _record(self, job: Job, outcome: tasks.Outcome) -> None:
        stage = self.stages[job.stage]
        stage.after(self, job, outcome)
        blobs = self.recorder.put_blobs(outcome.blobs, stage.kinds())
        row = self.recorder.record(self.sweep_id, stage.row(job, outcome, blobs), blobs.values())
        if outcome.ok:
            self._produced[job.key] = stage.produced(row)
            self._report(self.schedule.finish(job.key, "done"))
        else:
            self._report(self.schedule.finish(job.key, "failed", outcome.error))

    def _report(self, event: Event) -> None:
        if event.state in ("blocked", "cached"):  # done and failed were marked with their row
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

    # --- what stages ask for (farm.stages.Context) --------------------------------------

    def job(self, key: str) -> Job:
        return self.schedule.jobs[key]

    def produced(self, key: str) -> Produced:
        return self._produced[key]

    def finished(self, key: str) -> Produced | None:
        return self._produced.get(key)

    def place(self, target_id: str) -> dict[str, Any]:
        return {"scheduling_strategy": NodeAffinitySchedulingStrategy(self.placement.next_node(target_id), soft=False)}

    def node_cpus(self, target_id: str, options: dict[str, Any]) -> float:
        return max(1.0, self.nodes[options["scheduling_strategy"].node_id].cpus)

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
    return samples.array[rows], labels[rows] if labels is not None else None
