"""build: an engine of a variant for one backend, options and target."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

from farm.run import isolated
from farm.run.jobs import Job
from farm.run.stages.base import Context, Produced, Stage, gpu_for
from farm.run.tasks import Call, Outcome, ProgressForwarder
from farm.store.record import Blob, JobRow
from workers import stage_work
from workers.backends import BACKENDS
from workers.backends.base import BuildContext, cache_key
from workers.structs import BuildRequest


@dataclass(frozen=True)
class BuildJob(Job):
    stage: ClassVar[str] = "build"
    parents: ClassVar[tuple[str, ...]] = ("variant_key", "export_key")
    variant_key: str
    export_key: str  # the export's checkpoint: what the PyTorch backends build from
    request: BuildRequest
    backend_version: str


@dataclass(frozen=True, kw_only=True)
class BuildCall(Call):
    request: BuildRequest
    variant: bytes | None  # the ONNX a backend builds from; None for a module variant (its backend casts the checkpoint)
    checkpoint: bytes | None
    caches: tuple[bytes, ...]  # what earlier builds on this target left for the next (timing caches, Inductor's caches)
    progress_to: ProgressForwarder | None = None

    def run(self) -> tuple[Any, dict[str, bytes]]:
        engine = stage_work.build_engine(self.request, self.variant, self.checkpoint,
                                         BuildContext(progress=self.progress_to, caches=self.caches))
        blobs = {"engine": engine.data}
        engine.data = b""  # the bytes travel once, as a blob
        if engine.builder_cache:
            blobs["builder_cache"] = engine.builder_cache
            engine.builder_cache = None
        return engine, blobs

    def progress(self) -> ProgressForwarder | None:
        return self.progress_to

    def reporting_to(self, progress: ProgressForwarder | None) -> BuildCall:
        return replace(self, progress_to=progress)


def variant_summary(details: dict[str, Any] | None) -> dict[str, Any]:
    """What a build's manifest says of its variant beyond the precision."""
    return {k: details[k] for k in ("method", "layout", "quantized_fraction") if details and k in details}


class BuildStage(Stage[BuildJob]):
    job_type = BuildJob
    artifacts = {"engine": ("engine_sha256", "engine")}

    def __init__(self) -> None:
        self.caches_given: dict[str, list[str]] = {}  # build key -> the builder cache shas it started from

    def call(self, ctx: Context, job: BuildJob) -> BuildCall:
        variant = ctx.produced(job.variant_key)
        checkpoint = ctx.produced(job.export_key).blobs.get("checkpoint")
        onnx = variant.blobs.get("onnx")  # none for a module variant: its backend builds from the checkpoint
        progress = ProgressForwarder(ctx.progress_queue, job.key) if ctx.progress_queue is not None else None
        return BuildCall(request=replace(job.request, variant=variant_summary(variant.details)), variant=ctx.blob(onnx) if onnx else None,
                         checkpoint=ctx.blob(checkpoint) if checkpoint else None, caches=self._caches(ctx, job), progress_to=progress)

    def isolated(self, ctx: Context) -> bool:
        return ctx.spec.limits.isolate_builds

    def options(self, ctx: Context, job: BuildJob) -> dict[str, Any]:
        # an isolated build whose process died is tried again, like a Ray worker that died
        again = {"retry_exceptions": [isolated.ChildDied]} if self.isolated(ctx) else {}
        return super().options(ctx, job) | again | gpu_for(job.request.target.kind)

    def _caches(self, ctx: Context, job: BuildJob) -> tuple[bytes, ...]:
        """What earlier builds on this target left for the next (TensorRT timing caches, Inductor's caches)."""
        key = cache_key(BACKENDS[job.request.backend], job.request, job.backend_version)
        if key is None:
            return ()
        given = ctx.recorder.builder_caches(job.request.target.id, key)
        self.caches_given[job.key] = given
        return tuple(ctx.recorder.store.artifacts.get(sha) for sha in given)

    def after(self, ctx: Context, job: BuildJob, outcome: Outcome) -> None:
        cache = outcome.blobs.pop("builder_cache", None)
        key = cache_key(BACKENDS[job.request.backend], job.request, job.backend_version)
        if cache is not None and key is not None:
            ctx.recorder.update_builder_cache(job.request.target.id, key, self.caches_given.pop(job.key, []), cache)

    def columns(self, job: BuildJob, value: Any) -> dict[str, Any]:
        r = job.request
        found: dict[str, Any] = {"variant_key": job.variant_key, "target_id": r.target.id, "backend": r.backend,
                                 "backend_version": job.backend_version, "options": r.options, "label": job.label[:256]}
        if value is not None:
            found |= {"manifest": value.manifest.to_json(), "peak_host_memory_bytes": value.peak_host_memory_bytes,
                      "peak_device_memory_bytes": value.peak_device_memory_bytes}
        return found

    def row(self, job: BuildJob, outcome: Outcome, blobs: dict[str, Blob]) -> JobRow:
        found = super().row(job, outcome, blobs)
        if not outcome.ok:
            return found
        engine = outcome.value
        columns = found.columns | {"engine_bytes": blobs["engine"].size if "engine" in blobs else None}
        log = (engine.log + ("\n" + outcome.log if outcome.log else "")) if engine.log else found.log
        return replace(found, columns=columns, seconds=engine.seconds or outcome.seconds, log=log)

    def produced(self, row: Any) -> Produced:
        return replace(super().produced(row), manifest=row.manifest)
