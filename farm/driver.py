"""The Ray fan-out: the pipeline of DESIGN.md, one stage at a time as jobs become ready.

    spec --expand--> jobs
    export (per model) -> reference (fp32 outputs on the held-out rows)
                       -> calibrate (per method, on the calibration rows) -> variant (per precision x method)
                       -> build (per variant x backend x options x target)
                       -> benchmark (per batch size, exclusive use of the device), fidelity (against the reference)

The driver is the only writer: each result is recorded the moment it arrives. A job whose
key already finished is not redone (unless forced); a failed job is recorded with its error
and log, its dependants are marked blocked, and everything else goes on.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.exceptions import RayError, TaskCancelledError
from ray.util.queue import Queue
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from farm import cluster, tasks
from farm.plan import (
    BenchmarkJob,
    BuildJob,
    CalibrateJob,
    DataRef,
    ExportJob,
    FidelityJob,
    Job,
    Plan,
    ReferenceJob,
    TargetGroup,
    VariantJob,
    expand,
)
from farm.spec import SpecError, SweepSpec
from farm.store.db import Store
from farm.store.record import Produced, Recorder
from workers.calibration import CalibrationDataError, Samples, load_inputs, load_labels
from workers.structs import Manifest, Preprocess

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
    recorder.save_targets(groups, {g.target.id: asdict(next(n.device for n in nodes if n.node_id == g.nodes[0])) for g in groups})
    sweep_id = recorder.start_sweep(spec.name, spec_path, spec.model_dump(mode="json"), plan.jobs)
    run = _SweepRun(spec, plan, groups, {n.node_id: n for n in nodes}, recorder, sweep_id, force, listener, on_build_progress)
    try:
        run.execute()
    except BaseException:
        recorder.finish_sweep(sweep_id, "interrupted")
        raise
    recorder.finish_sweep(sweep_id, "finished")
    return SweepResult(sweep_id, plan, run.states, run.errors)


def check_inputs(spec: SweepSpec, base: Path, spec_path: str) -> None:
    """Fail before any work when the spec points at data that is not there."""
    used = [("fidelity.data" if spec.fidelity.data else "calibration.data", spec.fidelity.folder(base, spec.calibration))]
    if spec.needs_calibration():
        used.append(("calibration.data", spec.calibration.folder(base)))
    for field, path in used:
        if not path.exists():
            raise SpecError(f"{spec_path}: {field}: {path} does not exist (relative paths start at the spec's folder)")
    labels = spec.fidelity.labels_file(base)
    if labels is not None and not labels.is_file():
        raise SpecError(f"{spec_path}: fidelity.labels: {labels} is not a file")


class _SweepRun:
    def __init__(
        self,
        spec: SweepSpec,
        plan: Plan,
        groups: list[TargetGroup],
        nodes: dict[str, cluster.Node],
        recorder: Recorder,
        sweep_id: int,
        force: bool,
        listener: Listener | None,
        on_build_progress: BuildProgress | None = None,
    ) -> None:
        self.spec = spec
        self.jobs = {job.key: job for job in plan.jobs}
        self.order = list(self.jobs)
        self.groups = {g.target.id: g for g in groups}
        self.nodes = nodes
        self.round_robin = {tid: itertools.cycle(g.nodes) for tid, g in self.groups.items()}
        self.recorder = recorder
        self.sweep_id = sweep_id
        self.force = force
        self.listener = listener
        self.on_build_progress = on_build_progress
        # Builders that report progress (TensorRT) send it here; the driver drains it while it waits.
        reports_progress = on_build_progress is not None and any(
            isinstance(j, BuildJob) and j.request.backend == "tensorrt" for j in plan.jobs
        )
        self.progress_queue: Queue | None = Queue(maxsize=1000) if reports_progress else None
        self.timing_caches_given: dict[str, list[str]] = {}  # build key -> cache shas it started from
        self.produced: dict[str, Produced] = {}
        self.states: dict[str, str] = {}
        self.errors: dict[str, str] = {}
        self.inflight: dict[ray.ObjectRef, tuple[Job, float]] = {}
        self.blob_refs: dict[str, ray.ObjectRef] = {}
        self.input_refs: dict[str, tuple[ray.ObjectRef, ray.ObjectRef | None]] = {}
        self.loaded: dict[tuple[Path, Preprocess, tuple[int, ...]], Samples] = {}
        # Submit no more than the cluster can run at once, so a job's timeout clock starts near its start.
        self.max_inflight = max(1, int(sum(n.cpus for n in nodes.values())))

    # --- the loop -----------------------------------------------------------------------

    def execute(self) -> None:
        for key in self.order:
            job = self.jobs[key]
            if not self.force and (found := self.recorder.produced(job)) is not None:
                self.produced[key] = found
                self._finish(job, "cached")
        pending = [k for k in self.order if k not in self.states]
        while pending or self.inflight:
            pending = self._submit_ready(pending)
            if not self.inflight:
                continue
            done, _ = ray.wait(list(self.inflight), num_returns=1, timeout=0.5)
            self._drain_progress()
            for ref in done:
                job, _started = self.inflight.pop(ref)
                self._collect(job, ref)
            self._expire()
        self.blob_refs.clear()
        self.input_refs.clear()
        self.loaded.clear()
        if self.progress_queue is not None:
            self.progress_queue.shutdown()

    def _drain_progress(self) -> None:
        if self.progress_queue is None or self.on_build_progress is None:
            return
        while not self.progress_queue.empty():
            key, phase, done, total = self.progress_queue.get_nowait()
            if key in self.jobs:
                self.on_build_progress(self.jobs[key], phase, done, total)

    def _submit_ready(self, pending: list[str]) -> list[str]:
        still = []
        for key in pending:
            job = self.jobs[key]
            upstream = [self.states.get(n) for n in job.needs]
            if any(state in ("failed", "blocked") for state in upstream):
                self._finish(job, "blocked", "an upstream job failed")
            elif all(state in ("done", "cached") for state in upstream) and len(self.inflight) < self.max_inflight:
                self._start(job)
            else:
                still.append(key)
        return still

    def _start(self, job: Job) -> None:
        if isinstance(job, VariantJob) and job.precision == "fp32":
            # fp32 is the export itself: nothing to compute, but a row to record.
            self._record(job, tasks.Outcome(True), inherited={"onnx": self.produced[job.needs[0]].blobs["onnx"]})
            return
        try:
            ref = self._submit(job)
        except Exception as exc:  # e.g. input data that cannot be read: the job fails, the sweep goes on
            self._record(job, tasks.Outcome(False, error=f"{type(exc).__name__}: {exc}"))
            return
        self.inflight[ref] = (job, time.monotonic())

    def _collect(self, job: Job, ref: ray.ObjectRef) -> None:
        try:
            outcome: tasks.Outcome = ray.get(ref)
        except TaskCancelledError:
            outcome = tasks.Outcome(False, error=f"timed out after {self.spec.limits.job_timeout_s:.0f} s")
        except RayError as exc:  # the worker process died (a native crash, OOM) after its retries
            outcome = tasks.Outcome(False, error=f"{type(exc).__name__}: worker failed after retries", log=str(exc))
        self._record(job, outcome)

    def _expire(self) -> None:
        limit = self.spec.limits.job_timeout_s
        now = time.monotonic()
        for ref, (_job, started) in list(self.inflight.items()):
            if now - started > limit:
                ray.cancel(ref, force=True)

    def _record(self, job: Job, outcome: tasks.Outcome, inherited: dict[str, str] | None = None) -> None:
        cache = outcome.blobs.pop("timing_cache", None)
        if cache is not None and isinstance(job, BuildJob):
            given = self.timing_caches_given.pop(job.key, [])
            self.recorder.update_timing_cache(job.request.target.id, job.backend_version, given, cache)
        produced = self.recorder.record(self.sweep_id, job, outcome, inherited)
        if outcome.ok:
            self.produced[job.key] = produced
            self._finish(job, "done")
        else:
            self._finish(job, "failed", outcome.error)

    def _finish(self, job: Job, state: str, error: str | None = None) -> None:
        self.states[job.key] = state
        if error:
            self.errors[job.key] = error
        if state == "blocked":
            self.recorder.mark(self.sweep_id, job, state, error)
        elif state == "cached":
            self.recorder.mark(self.sweep_id, job, state)
        if self.listener:
            self.listener(job.stage, state, job, error)

    # --- what each stage needs ----------------------------------------------------------

    def _submit(self, job: Job) -> ray.ObjectRef:
        retries = self.spec.limits.retries
        if isinstance(job, ExportJob):
            return tasks.export_task.options(max_retries=retries).remote(job.model)
        if isinstance(job, ReferenceJob):
            fp32 = self._blob(self.produced[job.needs[0]].blobs["onnx"])
            inputs, _labels = self._inputs(job.data)
            return tasks.reference_task.options(max_retries=retries).remote(fp32, inputs, max(self.spec.batch_sizes), job.model.task)
        if isinstance(job, CalibrateJob):
            fp32 = self._blob(self.produced[job.needs[0]].blobs["onnx"])
            inputs, _labels = self._inputs(job.data)
            return tasks.calibrate_task.options(max_retries=retries).remote(fp32, inputs, job.method, job.percentile)
        if isinstance(job, VariantJob):
            return self._submit_variant(job)
        if isinstance(job, BuildJob):
            variant_blobs = self.produced[job.needs[0]].blobs
            checkpoint = self.produced[job.needs[1]].blobs.get("checkpoint")
            task = tasks.isolated_build_task if self.spec.limits.isolate_builds else tasks.build_task
            context = tasks.build_context(job.key, self._timing_caches(job), self.progress_queue)
            request = replace(job.request, variant=variant_summary(self.produced[job.needs[0]].details))
            return task.options(max_retries=retries, **self._place(job.request.target.id)).remote(
                request, self._blob(variant_blobs["onnx"]), self._blob(checkpoint) if checkpoint else None, context
            )
        if isinstance(job, BenchmarkJob):
            plan, manifest = self._engine(job.needs[0])
            placement = self._place(job.target.id)
            node = self.nodes[placement["scheduling_strategy"].node_id]
            # A CPU timing takes every CPU of its node: nothing else runs there while it measures.
            resources = {"num_gpus": 1, "num_cpus": 1} if job.target.kind == "gpu" else {"num_cpus": max(1.0, node.cpus)}
            return tasks.benchmark_task.options(max_retries=retries, **placement, **resources).remote(
                plan, manifest, job.batch_size, job.settings
            )
        if isinstance(job, FidelityJob):
            plan, manifest = self._engine(job.needs[0])
            reference_job = self.jobs[job.needs[1]]
            assert isinstance(reference_job, ReferenceJob)
            reference = self._blob(self.produced[reference_job.key].blobs["reference"])
            inputs, labels = self._inputs(reference_job.data)
            gpu = {"num_gpus": 1} if job.target.kind == "gpu" else {}
            return tasks.fidelity_task.options(max_retries=retries, **self._place(job.target.id), **gpu).remote(
                plan, manifest, inputs, reference, job.batch_size, labels, reference_job.model.task, job.box_score_threshold
            )
        raise TypeError(f"no task for stage {job.stage}")

    def _timing_caches(self, job: BuildJob) -> tuple[bytes, ...]:
        """Datacenter TensorRT builds on GPU targets start from the caches of earlier builds there."""
        if job.request.backend != "tensorrt" or job.request.target.kind != "gpu":
            return ()
        given = self.recorder.timing_caches(job.request.target.id, job.backend_version)
        self.timing_caches_given[job.key] = given
        return tuple(self.recorder.store.artifacts.get(sha) for sha in given)

    def _submit_variant(self, job: VariantJob) -> ray.ObjectRef:
        fp32 = self._blob(self.produced[job.needs[0]].blobs["onnx"])
        settings: dict[str, Any] = {"fp16": job.fp16} if job.precision == "fp16" else {
            "min_top1_agreement": job.min_top1_agreement, "fallback_tries": job.fallback_tries,
            "layout": job.layout, "max_float_fraction": job.max_float_fraction}
        ranges = heldout = reference = labels = None
        if job.precision in ("int8", "fp8"):
            ranges = self._blob(self.produced[job.needs[1]].blobs["ranges"])
            if job.fallback_tries and job.heldout is not None:
                heldout, labels = self._inputs(job.heldout)
                reference = self._blob(self.produced[job.needs[2]].blobs["reference"])
        return tasks.variant_task.options(max_retries=self.spec.limits.retries).remote(
            fp32, job.precision, ranges, heldout, reference, labels, settings
        )

    def _place(self, target_id: str) -> dict[str, Any]:
        node_id = next(self.round_robin[target_id])
        return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id, soft=False)}

    def _engine(self, build_key: str) -> tuple[ray.ObjectRef, Manifest]:
        produced = self.produced[build_key]
        assert produced.manifest is not None
        return self._blob(produced.blobs["engine"]), Manifest.from_json(produced.manifest)

    def _blob(self, sha256: str) -> ray.ObjectRef:
        if sha256 not in self.blob_refs:
            self.blob_refs[sha256] = ray.put(self.recorder.store.artifacts.get(sha256))
        return self.blob_refs[sha256]

    def _inputs(self, data: DataRef) -> tuple[ray.ObjectRef, ray.ObjectRef | None]:
        """The rows a stage uses, loaded once per sweep: (inputs, labels or None)."""
        if data.digest not in self.input_refs:
            source = (data.path, data.preprocess, data.input_shape)
            if source not in self.loaded:  # calibration and held-out rows often come from one folder
                self.loaded[source] = load_inputs(*source)
            array, labels = load_rows(data, self.loaded[source])
            self.input_refs[data.digest] = (ray.put(array), ray.put(labels) if labels is not None else None)
        return self.input_refs[data.digest]


def variant_summary(details: dict[str, Any] | None) -> dict[str, Any]:
    """What a build's manifest says of its variant beyond the precision."""
    return {k: details[k] for k in ("method", "layout", "quantized_fraction") if details and k in details}


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
