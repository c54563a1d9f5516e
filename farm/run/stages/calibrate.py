"""calibrate: activation ranges of the fp32 model over the calibration rows, once per method."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from farm.run.jobs import DataRef, Job
from farm.run.stages.base import Context, Stage
from farm.run.tasks import Call
from workers import stage_work
from workers.structs import ModelRef


@dataclass(frozen=True)
class CalibrateJob(Job):
    """Activation ranges of the fp32 model over the calibration rows, once per method."""

    stage: ClassVar[str] = "calibrate"
    parents: ClassVar[tuple[str, ...]] = ("export_key",)
    export_key: str
    model: ModelRef
    method: str
    percentile: float
    data: DataRef


@dataclass(frozen=True, kw_only=True)
class CalibrateCall(Call):
    fp32: bytes
    inputs: np.ndarray
    method: str
    percentile: float

    def run(self) -> tuple[Any, dict[str, bytes]]:
        ranges = stage_work.calibrate_model(self.fp32, self.inputs, self.method, self.percentile)
        return {"samples": ranges.samples, "tensors": len(ranges.tensors), "seconds": ranges.seconds}, {"ranges": ranges.to_bytes()}


class CalibrateStage(Stage[CalibrateJob]):
    job_type = CalibrateJob
    artifacts = {"ranges": ("ranges_sha256", "calibration")}

    def call(self, ctx: Context, job: CalibrateJob) -> CalibrateCall:
        inputs, _labels = ctx.rows(job.data)
        return CalibrateCall(fp32=ctx.blob(ctx.produced(job.export_key).blobs["onnx"]), inputs=inputs, method=job.method,
                             percentile=job.percentile)

    def columns(self, job: CalibrateJob, value: Any) -> dict[str, Any]:
        return {"model_key": job.export_key, "method": job.method, "percentile": job.percentile or None,
                "data_digest": job.data.digest, "samples": value["samples"] if value else None,
                "tensors": value["tensors"] if value else None}
