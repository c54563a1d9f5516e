"""export: a model's ONNX graph (and its PyTorch checkpoint, where the source has one)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from farm.run.jobs import Job, KeyInputs
from farm.run.stages.base import Context, Stage
from farm.run.tasks import Call
from workers import stage_work
from workers.structs import ModelRef


@dataclass(frozen=True)
class ExportJob(Job):
    stage: ClassVar[str] = "export"
    model: ModelRef
    inputs: KeyInputs = field(default_factory=lambda: KeyInputs({}, {}))  # what its key hashes beyond `model`


@dataclass(frozen=True, kw_only=True)
class ExportCall(Call):
    model: ModelRef

    def run(self) -> tuple[Any, dict[str, bytes]]:
        exported = stage_work.export_model(self.model)
        blobs = {"onnx": exported.onnx_bytes}
        if exported.checkpoint is not None:
            blobs["checkpoint"] = exported.checkpoint
        return exported.info, blobs


class ExportStage(Stage[ExportJob]):
    job_type = ExportJob
    artifacts = {"onnx": ("onnx_sha256", "onnx"), "checkpoint": ("checkpoint_sha256", "checkpoint")}

    def call(self, ctx: Context, job: ExportJob) -> ExportCall:
        return ExportCall(model=job.model)

    def columns(self, job: ExportJob, value: Any) -> dict[str, Any]:
        m = job.model
        found: dict[str, Any] = {"name": m.name, "source": m.source, "weights": m.weights, "input_shape": list(m.input_shape)}
        if value is not None:
            found |= {"opset": value.opset, "inputs": [t.to_json() for t in value.inputs],
                      "outputs": [t.to_json() for t in value.outputs], "node_count": value.node_count}
        return found
