"""The pipeline's stages, one entry each: what a job of the stage needs, which Ray task runs it,
how its result becomes a row, and which artifacts it leaves for its children.

    export -> reference -> calibrate -> variant -> build -> benchmark, fidelity

The driver walks this registry to submit and record jobs, resume reads it to turn a stored row
back into what children need, and nothing else dispatches on a job's type. A new stage is one
`Stage` subclass here, a job type in farm.run.jobs, a table in farm.store.schema and a function in
workers.stages.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar, Protocol

import ray

from farm.run import isolated, tasks
from farm.run.jobs import (
    BenchmarkJob,
    BuildJob,
    CalibrateJob,
    DataRef,
    ExportJob,
    FidelityJob,
    Job,
    ReferenceJob,
    RetimeJob,
    VariantJob,
)
from farm.results.evidence import columns_of, evidence_of
from farm.results.metrics import METRICS, benchmark_columns, fidelity_columns
from farm.results.metrics import values as metric_values
from farm.results.select import Candidate
from farm.run.spec import SweepSpec
from farm.store.record import Blob, JobRow, Recorder
from farm.store.schema import JobColumns
from workers.backends import BACKENDS
from workers.backends.base import cache_key
from workers.structs import Manifest


@dataclass(frozen=True)
class Produced:
    """What a finished job hands to its children."""

    blobs: dict[str, str] = field(default_factory=dict)  # role -> artifact sha256
    manifest: dict[str, Any] | None = None  # a build's
    details: dict[str, Any] | None = None  # a variant's: what its builds record in their manifests
    values: dict[str, Any] | None = None  # a benchmark's or fidelity's metrics (farm.results.metrics), for the re-timing


class Context(Protocol):
    """What a stage may ask of the running sweep while it submits a job (the driver provides it)."""

    spec: SweepSpec
    recorder: Recorder
    progress_queue: Any

    def job(self, key: str) -> Job: ...

    def produced(self, key: str) -> Produced: ...

    def finished(self, key: str) -> Produced | None:
        """What a parent left, or None where it failed or was blocked."""
        ...

    def blob(self, sha256: str) -> ray.ObjectRef:
        """The artifact in Ray's object store, put there once per sweep."""
        ...

    def rows(self, data: DataRef) -> tuple[ray.ObjectRef, ray.ObjectRef | None]:
        """The inputs (and labels) a DataRef names, loaded once per sweep."""
        ...

    def pin(self, job: Job) -> dict[str, Any]:
        """Ray options that run the job's task on the node farm.run.schedule.Placement chose for it."""
        ...

    def timing_resources(self, job: Job) -> dict[str, Any]:
        """What a timing asks Ray for: one GPU, or every CPU of its node, so nothing lands beside it."""
        ...


class Stage:
    """One pipeline stage. `artifacts`: role -> (row column, artifact kind)."""

    name: ClassVar[str]
    job_type: ClassVar[type[Job]]
    artifacts: ClassVar[dict[str, tuple[str, str]]] = {}

    def submit(self, ctx: Context, job: Any) -> ray.ObjectRef | tasks.Outcome:
        """Start the job's task (or finish it here, returning its Outcome, when there is nothing to run)."""
        raise NotImplementedError

    def columns(self, job: Any, value: Any) -> dict[str, Any]:
        """The stage table's own columns, from the job and (when it succeeded) the worker's value."""
        return {}

    def after(self, ctx: Context, job: Any, outcome: tasks.Outcome) -> None:
        """Anything to store beside the row before it is written (a build's timing cache)."""

    def row(self, job: Any, outcome: tasks.Outcome, blobs: dict[str, Blob]) -> JobRow:
        shas = {role: blob.sha256 for role, blob in blobs.items()} | outcome.inherited
        columns = self.columns(job, outcome.value if outcome.ok or outcome.rejected else None)
        columns |= {column: shas.get(role) for role, (column, _kind) in self.artifacts.items()}
        return JobRow(self.name, job.key, outcome.ok, columns, outcome.error, outcome.log, outcome.seconds, outcome.node, outcome.device,
                      outcome.rejected)

    def produced(self, row: Any) -> Produced:
        return Produced({role: sha for role, (column, _kind) in self.artifacts.items() if (sha := getattr(row, column))})

    def kinds(self) -> dict[str, str]:
        return {role: kind for role, (_column, kind) in self.artifacts.items()}

    def retries(self, ctx: Context) -> dict[str, Any]:
        return {"max_retries": ctx.spec.limits.retries}


class ExportStage(Stage):
    name = "export"
    job_type = ExportJob
    artifacts = {"onnx": ("onnx_sha256", "onnx"), "checkpoint": ("checkpoint_sha256", "checkpoint")}

    def submit(self, ctx: Context, job: ExportJob) -> ray.ObjectRef:
        return tasks.export_task.options(**self.retries(ctx), **ctx.pin(job)).remote(job.model)

    def columns(self, job: ExportJob, value: Any) -> dict[str, Any]:
        m = job.model
        found: dict[str, Any] = {"name": m.name, "source": m.source, "weights": m.weights, "input_shape": list(m.input_shape)}
        if value is not None:
            found |= {"opset": value.opset, "inputs": [t.to_json() for t in value.inputs],
                      "outputs": [t.to_json() for t in value.outputs], "node_count": value.node_count}
        return found


class ReferenceStage(Stage):
    name = "reference"
    job_type = ReferenceJob
    artifacts = {"reference": ("outputs_sha256", "reference")}

    def submit(self, ctx: Context, job: ReferenceJob) -> ray.ObjectRef:
        fp32 = ctx.blob(ctx.produced(job.export_key).blobs["onnx"])
        inputs, _labels = ctx.rows(job.data)
        return tasks.reference_task.options(**self.retries(ctx), **ctx.pin(job)).remote(
            fp32, inputs, max(ctx.spec.batch_sizes), job.model.task, ctx.spec.fidelity.box_score_threshold)

    def columns(self, job: ReferenceJob, value: Any) -> dict[str, Any]:
        return {"model_key": job.export_key, "data_digest": job.data.digest, "samples": value["samples"] if value else None,
                "noise_floor": value.get("noise_floor") if value else None, "note": value.get("note") if value else None}

    def produced(self, row: Any) -> Produced:
        return replace(super().produced(row), details={"noise_floor": row.noise_floor, "note": row.note})


class CalibrateStage(Stage):
    name = "calibrate"
    job_type = CalibrateJob
    artifacts = {"ranges": ("ranges_sha256", "calibration")}

    def submit(self, ctx: Context, job: CalibrateJob) -> ray.ObjectRef:
        fp32 = ctx.blob(ctx.produced(job.export_key).blobs["onnx"])
        inputs, _labels = ctx.rows(job.data)
        return tasks.calibrate_task.options(**self.retries(ctx), **ctx.pin(job)).remote(fp32, inputs, job.method, job.percentile)

    def columns(self, job: CalibrateJob, value: Any) -> dict[str, Any]:
        return {"model_key": job.export_key, "method": job.method, "percentile": job.percentile or None,
                "data_digest": job.data.digest, "samples": value["samples"] if value else None,
                "tensors": value["tensors"] if value else None}


class VariantStage(Stage):
    name = "variant"
    job_type = VariantJob
    artifacts = {"onnx": ("onnx_sha256", "onnx")}

    def __init__(self) -> None:
        self.unjudged: dict[str, str] = {}  # variant key -> why its fallback did not run (a degenerate reference)

    def submit(self, ctx: Context, job: VariantJob) -> ray.ObjectRef | tasks.Outcome:
        fp32_sha = ctx.produced(job.export_key).blobs["onnx"]
        if job.precision == "fp32":  # the export itself: nothing to compute, but a row to record
            return tasks.Outcome(True, inherited={"onnx": fp32_sha})
        if job.form == "module":  # cast where it is built, from the export's weights: nothing to make now
            return tasks.Outcome(True, value={"form": "module", "precision": job.precision})
        settings: dict[str, Any] = {"fp16": job.fp16} if job.precision == "fp16" else {
            "min_top1_agreement": job.min_top1_agreement, "min_cosine": job.min_cosine, "fallback_tries": job.fallback_tries,
            "layout": job.layout, "max_float_fraction": job.max_float_fraction, "confident_margin": job.confident_margin}
        ranges = heldout = reference = labels = None
        degenerate = (ctx.produced(job.reference_key).details or {}).get("note") if job.reference_key else None
        if degenerate and job.fallback_tries:  # fidelity against such a reference means nothing: nothing to fall back for
            settings["fallback_tries"] = 0
            self.unjudged[job.key] = degenerate
        if job.calibration_key is not None:
            ranges = ctx.blob(ctx.produced(job.calibration_key).blobs["ranges"])
            if settings.get("fallback_tries") and job.heldout is not None and job.reference_key is not None:
                heldout, labels = ctx.rows(job.heldout)
                produced = ctx.produced(job.reference_key)
                reference = ctx.blob(produced.blobs["reference"])
                if job.confident_margin is not None:  # judged as eligibility will judge it: fp32's own flips forgiven
                    settings["noise_flipped"] = list(((produced.details or {}).get("noise_floor") or {}).get("flipped") or [])
        return tasks.variant_task.options(**self.retries(ctx), **ctx.pin(job)).remote(
            ctx.blob(fp32_sha), job.precision, ranges, heldout, reference, labels, settings
        )

    def columns(self, job: VariantJob, value: Any) -> dict[str, Any]:
        details = value if isinstance(value, dict) else ({"fp16": job.fp16} if job.fp16 else None)
        if job.key in self.unjudged and details is not None:
            details = details | {"fallback": {"skipped": f"{self.unjudged.pop(job.key)}: quantized as calibrated, judged by speed"}}
        return {"model_key": job.export_key, "precision": job.precision, "method": job.method,
                "calibration_key": job.calibration_key, "details": details}

    def produced(self, row: Any) -> Produced:
        return replace(super().produced(row), details=row.details)


def variant_summary(details: dict[str, Any] | None) -> dict[str, Any]:
    """What a build's manifest says of its variant beyond the precision."""
    return {k: details[k] for k in ("method", "layout", "quantized_fraction") if details and k in details}


class BuildStage(Stage):
    name = "build"
    job_type = BuildJob
    artifacts = {"engine": ("engine_sha256", "engine")}

    def __init__(self) -> None:
        self.caches_given: dict[str, list[str]] = {}  # build key -> the builder cache shas it started from

    def submit(self, ctx: Context, job: BuildJob) -> ray.ObjectRef:
        variant = ctx.produced(job.variant_key)
        checkpoint = ctx.produced(job.export_key).blobs.get("checkpoint")
        onnx = variant.blobs.get("onnx")  # none for a module variant: its backend builds from the checkpoint
        isolate = ctx.spec.limits.isolate_builds
        task = tasks.isolated_build_task if isolate else tasks.build_task
        # an isolated build whose process died is tried again, like a Ray worker that died
        again = {"retry_exceptions": [isolated.ChildDied]} if isolate else {}
        context = tasks.build_context(job.key, self._caches(ctx, job), ctx.progress_queue)
        request = replace(job.request, variant=variant_summary(variant.details))
        return task.options(**self.retries(ctx), **again, **ctx.pin(job), **gpu_for(job.request.target.kind)).remote(
            request, ctx.blob(onnx) if onnx else None, ctx.blob(checkpoint) if checkpoint else None, context
        )

    def _caches(self, ctx: Context, job: BuildJob) -> tuple[bytes, ...]:
        """What earlier builds on this target left for the next (TensorRT timing caches, Inductor's caches)."""
        key = cache_key(BACKENDS[job.request.backend], job.request, job.backend_version)
        if key is None:
            return ()
        given = ctx.recorder.builder_caches(job.request.target.id, key)
        self.caches_given[job.key] = given
        return tuple(ctx.recorder.store.artifacts.get(sha) for sha in given)

    def after(self, ctx: Context, job: BuildJob, outcome: tasks.Outcome) -> None:
        cache = outcome.blobs.pop("builder_cache", None)
        key = cache_key(BACKENDS[job.request.backend], job.request, job.backend_version)
        if cache is not None and key is not None:
            ctx.recorder.update_builder_cache(job.request.target.id, key, self.caches_given.pop(job.key, []), cache)

    def columns(self, job: BuildJob, value: Any) -> dict[str, Any]:
        r = job.request
        found: dict[str, Any] = {"variant_key": job.variant_key, "target_id": r.target.id, "backend": r.backend,
                                 "backend_version": job.backend_version, "options": r.options, "label": job.label[:256]}
        if value is not None:
            found |= {"manifest": value.manifest.to_json(), "peak_host_memory_bytes": value.peak_host_memory_bytes}
        return found

    def row(self, job: BuildJob, outcome: tasks.Outcome, blobs: dict[str, Blob]) -> JobRow:
        found = super().row(job, outcome, blobs)
        if not outcome.ok:
            return found
        engine = outcome.value
        columns = found.columns | {"engine_bytes": blobs["engine"].size if "engine" in blobs else None}
        log = (engine.log + ("\n" + outcome.log if outcome.log else "")) if engine.log else found.log
        return replace(found, columns=columns, seconds=engine.seconds or outcome.seconds, log=log)

    def produced(self, row: Any) -> Produced:
        return replace(super().produced(row), manifest=row.manifest)


def gpu_for(target_kind: str) -> dict[str, Any]:
    """A job on a GPU target holds one whole GPU (Ray sets CUDA_VISIBLE_DEVICES to it)."""
    return {"num_gpus": 1} if target_kind == "gpu" else {}


def _engine(ctx: Context, build_key: str) -> tuple[ray.ObjectRef, Manifest, tuple[bytes, ...]]:
    """A built engine for a job that runs it: its bytes, its manifest and the builder caches it names."""
    produced = ctx.produced(build_key)
    assert produced.manifest is not None
    manifest = Manifest.from_json(produced.manifest)
    key = manifest.extra.get("builder_cache_key")
    shas = ctx.recorder.builder_caches(manifest.target, key) if key else []
    return ctx.blob(produced.blobs["engine"]), manifest, tuple(ctx.recorder.store.artifacts.get(sha) for sha in shas)


class BenchmarkStage(Stage):
    name = "benchmark"
    job_type = BenchmarkJob

    def submit(self, ctx: Context, job: BenchmarkJob) -> ray.ObjectRef:
        engine, manifest, caches = _engine(ctx, job.build_key)
        return tasks.benchmark_task.options(**self.retries(ctx), **ctx.pin(job), **ctx.timing_resources(job)).remote(
            engine, manifest, job.batch_size, job.settings, caches
        )

    def columns(self, job: BenchmarkJob, value: Any) -> dict[str, Any]:
        found: dict[str, Any] = {"build_key": job.build_key, "batch_size": job.batch_size, "settings": asdict(job.settings)}
        if value is not None:
            found |= benchmark_columns(value)
        return found

    def produced(self, row: Any) -> Produced:
        return Produced(values=metric_values(row, "benchmark"))


class FidelityStage(Stage):
    name = "fidelity"
    job_type = FidelityJob

    def submit(self, ctx: Context, job: FidelityJob) -> ray.ObjectRef:
        engine, manifest, caches = _engine(ctx, job.build_key)
        reference_job = ctx.job(job.reference_key)
        assert isinstance(reference_job, ReferenceJob)
        reference = ctx.blob(ctx.produced(job.reference_key).blobs["reference"])
        inputs, labels = ctx.rows(reference_job.data)
        return tasks.fidelity_task.options(**self.retries(ctx), **ctx.pin(job), **gpu_for(job.target.kind)).remote(
            engine, manifest, inputs, reference, job.batch_size, labels, reference_job.model.task, job.box_score_threshold, caches
        )

    def columns(self, job: FidelityJob, value: Any) -> dict[str, Any]:
        found: dict[str, Any] = {"build_key": job.build_key, "reference_key": job.reference_key}
        if value is not None:
            found |= fidelity_columns(value)
        return found

    def produced(self, row: Any) -> Produced:
        return Produced(values=metric_values(row, "fidelity"), details=columns_of(row))


class RetimeStage(Stage):
    """The leading builds of a group, timed again interleaved on one node of the target."""

    name = "retime"
    job_type = RetimeJob

    def submit(self, ctx: Context, job: RetimeJob) -> ray.ObjectRef | tasks.Outcome:
        contenders, reason = self.contenders(ctx, job)
        if len(contenders) < 2:
            return tasks.Outcome(True, value={"contenders": [], "rounds": None, "reason": reason})
        engines = [_engine(ctx, key) for key in contenders]
        s = job.settings
        return tasks.retime_task.options(**self.retries(ctx), **ctx.pin(job), **ctx.timing_resources(job)).remote(
            contenders, [m for _, m, _ in engines], [c for _, _, c in engines], job.batch_size, s.rounds, s.window_s,
            ctx.spec.benchmark.data_transfers, *(e for e, _, _ in engines)
        )

    def contenders(self, ctx: Context, job: RetimeJob) -> tuple[list[str], str]:
        """The build keys to re-time, the leader first: the eligible builds within reach of the leader."""
        found = []
        for bench_key, fid_key in zip(job.benchmark_keys, job.fidelity_keys, strict=True):
            bench = ctx.finished(bench_key)
            fid = ctx.finished(fid_key) if fid_key else None
            if bench is None:
                continue
            build = ctx.job(ctx.job(bench_key).build_key)  # type: ignore[attr-defined]
            assert isinstance(build, BuildJob)
            reference = (ctx.finished(ctx.job(fid_key).reference_key) if fid_key else None)  # type: ignore[attr-defined]
            floor = (reference.details or {}) if reference is not None else {}
            found.append(Candidate(build.key, build.label, job.model, build.request.precision, build.request.backend,
                                   build.request.options, job.target.id, job.batch_size, None,
                                   (bench.values or {}) | ((fid.values if fid else None) or {}),
                                   evidence=evidence_of(fid.details if fid else None, floor.get("noise_floor"), floor.get("note"))))
        objective = job.settings.objective
        eligible = sorted((c for c in found if c.eligible(job.constraints)), key=lambda c: c.score(objective))  # type: ignore[arg-type]
        if len(eligible) < 2:
            return [], f"{len(eligible)} of {len(found)} benchmarked builds meet the constraints: nothing to compare"
        lead = eligible[0].value(objective) or 0.0
        higher = METRICS[objective].better == "higher"
        reach = [c for c in eligible[1:] if (value := c.value(objective)) is not None
                 and (value >= lead / (1 + job.settings.reach) if higher else value <= lead * (1 + job.settings.reach))]
        if not reach:
            return [], f"no eligible build within {job.settings.reach:.0%} of the leader: its lead is clear from the benchmarks"
        return [c.build_key for c in [eligible[0], *reach][: job.settings.max_candidates]], ""

    def columns(self, job: RetimeJob, value: Any) -> dict[str, Any]:
        found: dict[str, Any] = {"model": job.model, "target_id": job.target.id, "batch_size": job.batch_size,
                                 "objective": job.settings.objective, "settings": asdict(job.settings)}
        if value is not None:
            found |= {"contenders": value["contenders"], "rounds": value["rounds"], "reason": value["reason"] or None}
        return found


def registry() -> dict[str, Stage]:
    """A fresh registry per sweep (the build stage remembers which timing caches it handed out)."""
    stages: list[Stage] = [ExportStage(), ReferenceStage(), CalibrateStage(), VariantStage(), BuildStage(), BenchmarkStage(),
                           FidelityStage(), RetimeStage()]
    return {stage.name: stage for stage in stages}


STAGES: tuple[str, ...] = tuple(registry())


def stages_from(first: str) -> frozenset[str]:
    """`first` and every stage after it in the pipeline: what redoing `first` may make stale."""
    if first not in STAGES:
        raise ValueError(f"stage {first!r}: expected one of {', '.join(STAGES)}")
    return frozenset(STAGES[STAGES.index(first):])
