"""fidelity: an engine's outputs on the held-out rows against the reference's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from farm.results.evidence import columns_of
from farm.results.metrics import fidelity_columns
from farm.results.metrics import values as metric_values
from farm.run.jobs import Job
from farm.run.stages.base import Context, Produced, Stage, built_engine, gpu_for
from farm.run.stages.reference import ReferenceJob
from farm.run.tasks import Call
from workers import stage_work
from workers.detection import DetectionFidelity
from workers.fidelity import Fidelity
from workers.structs import Manifest, Target


@dataclass(frozen=True)
class FidelityJob(Job):
    stage: ClassVar[str] = "fidelity"
    parents: ClassVar[tuple[str, ...]] = ("build_key", "reference_key")
    build_key: str
    reference_key: str
    target: Target
    batch_size: int  # largest batch the engine accepts; inputs run in chunks of it
    box_score_threshold: float = 0.5  # detectors only


@dataclass(frozen=True, kw_only=True)
class FidelityCall(Call):
    engine: bytes
    manifest: Manifest
    inputs: np.ndarray
    reference: bytes
    batch_size: int
    labels: np.ndarray | None
    task: str
    box_score_threshold: float
    caches: tuple[bytes, ...]

    def run(self) -> Fidelity | DetectionFidelity:
        return stage_work.engine_fidelity(self.engine, self.manifest, self.inputs, self.reference, self.batch_size, labels=self.labels,
                                          task=self.task, box_score_threshold=self.box_score_threshold, caches=self.caches)


class FidelityStage(Stage[FidelityJob]):
    job_type = FidelityJob

    def call(self, ctx: Context, job: FidelityJob) -> FidelityCall:
        engine, manifest, caches = built_engine(ctx, job.build_key)
        reference_job = ctx.job(job.reference_key)
        assert isinstance(reference_job, ReferenceJob)
        inputs, labels = ctx.rows(reference_job.data)
        return FidelityCall(engine=engine, manifest=manifest, inputs=inputs, reference=ctx.blob(ctx.produced(job.reference_key).blobs["reference"]),
                            batch_size=job.batch_size, labels=labels, task=reference_job.model.task,
                            box_score_threshold=job.box_score_threshold, caches=caches)

    def options(self, ctx: Context, job: FidelityJob) -> dict[str, Any]:
        return super().options(ctx, job) | gpu_for(job.target.kind)

    def columns(self, job: FidelityJob, value: Any) -> dict[str, Any]:
        found: dict[str, Any] = {"build_key": job.build_key, "reference_key": job.reference_key}
        if value is not None:
            found |= fidelity_columns(value)
        return found

    def produced(self, row: Any) -> Produced:
        return Produced(values=metric_values(row, "fidelity"), details=columns_of(row))
