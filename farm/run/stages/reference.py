"""reference: the fp32 model's outputs on the held-out rows, what every build is judged against."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from farm.run.jobs import DataRef, Job
from farm.run.stages.base import Context, Produced, Stage
from farm.run.tasks import Call
from workers import stage_work
from workers.structs import ModelRef


@dataclass(frozen=True)
class ReferenceJob(Job):
    """The fp32 model's outputs on the held-out rows: what every build is judged against."""

    stage: ClassVar[str] = "reference"
    parents: ClassVar[tuple[str, ...]] = ("export_key",)
    export_key: str
    model: ModelRef
    data: DataRef


@dataclass(frozen=True, kw_only=True)
class ReferenceCall(Call):
    fp32: bytes
    inputs: np.ndarray
    batch_size: int
    task: str
    box_score_threshold: float

    def run(self) -> tuple[Any, dict[str, bytes]]:
        found = stage_work.reference_run(self.fp32, self.inputs, self.batch_size, self.task, box_score_threshold=self.box_score_threshold)
        return {"samples": len(self.inputs), "noise_floor": found.noise_floor, "note": found.note}, {"reference": found.outputs}


class ReferenceStage(Stage[ReferenceJob]):
    job_type = ReferenceJob
    artifacts = {"reference": ("outputs_sha256", "reference")}

    def call(self, ctx: Context, job: ReferenceJob) -> ReferenceCall:
        inputs, _labels = ctx.rows(job.data)
        return ReferenceCall(fp32=ctx.blob(ctx.produced(job.export_key).blobs["onnx"]), inputs=inputs, batch_size=max(ctx.spec.batch_sizes),
                             task=job.model.task, box_score_threshold=ctx.spec.fidelity.box_score_threshold)

    def columns(self, job: ReferenceJob, value: Any) -> dict[str, Any]:
        return {"model_key": job.export_key, "data_digest": job.data.digest, "samples": value["samples"] if value else None,
                "noise_floor": value.get("noise_floor") if value else None, "note": value.get("note") if value else None}

    def produced(self, row: Any) -> Produced:
        return replace(super().produced(row), details={"noise_floor": row.noise_floor, "note": row.note})
