"""variant: the model's ONNX after a precision transform (fp16; int8 / fp8 from a calibration, judged
by the fallback against the reference)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

from farm.run.jobs import DataRef, Job
from farm.run.stages.base import Context, Produced, Stage
from farm.run.tasks import Call, Outcome
from workers import stage_work
from workers.precision import DEFAULT_LAYOUT
from workers.structs import ModelRef


@dataclass(frozen=True)
class VariantJob(Job):
    """The model's ONNX after a precision transform; int8 / fp8 from a calibration, judged (by the
    fallback) against the reference."""

    stage: ClassVar[str] = "variant"
    parents: ClassVar[tuple[str, ...]] = ("export_key", "calibration_key", "reference_key")
    export_key: str
    model: ModelRef
    precision: str
    calibration_key: str | None = None
    reference_key: str | None = None
    method: str | None = None
    fp16: dict[str, Any] = field(default_factory=dict)
    min_top1_agreement: float = 0.99
    min_cosine: float | None = None  # the fallback must reach this too, where the spec constrains cosine
    fallback_tries: int = 0  # 0: no fallback
    heldout: DataRef | None = None
    layout: str = DEFAULT_LAYOUT  # int8: how the Q/DQ graph is written (workers.precision.INT8_LAYOUTS)
    max_float_fraction: float = 0.25
    confident_margin: float | None = None  # the evidence rule's, where the spec judges by evidence; None: the bare threshold
    form: str = "onnx"  # "module": no ONNX; a backend that builds from the checkpoint casts the module itself


@dataclass(frozen=True, kw_only=True)
class VariantCall(Call):
    """workers.stage_work.make_variant's arguments (fp16 reads `fp16` only)."""

    fp32: bytes
    precision: str
    fp16: dict[str, Any] | None
    ranges: bytes | None
    layout: str
    heldout: np.ndarray | None
    reference: bytes | None
    labels: np.ndarray | None
    min_top1_agreement: float
    min_cosine: float | None
    fallback_tries: int
    max_float_fraction: float
    confident_margin: float | None
    noise_flipped: tuple[int, ...]

    def run(self) -> tuple[Any, dict[str, bytes]]:
        variant = stage_work.make_variant(
            self.fp32, self.precision, fp16=self.fp16, ranges=self.ranges, layout=self.layout, heldout=self.heldout,
            reference=self.reference, labels=self.labels, min_top1_agreement=self.min_top1_agreement, min_cosine=self.min_cosine,
            fallback_tries=self.fallback_tries, max_float_fraction=self.max_float_fraction, confident_margin=self.confident_margin,
            noise_flipped=self.noise_flipped,
        )
        return variant.details, {"onnx": variant.onnx_bytes}


class VariantStage(Stage[VariantJob]):
    job_type = VariantJob
    artifacts = {"onnx": ("onnx_sha256", "onnx")}

    def __init__(self) -> None:
        self.unjudged: dict[str, str] = {}  # variant key -> why its fallback did not run (a degenerate reference)

    def call(self, ctx: Context, job: VariantJob) -> VariantCall | Outcome:
        fp32_sha = ctx.produced(job.export_key).blobs["onnx"]
        if job.precision == "fp32":  # the export itself: nothing to compute, but a row to record
            return Outcome(True, inherited={"onnx": fp32_sha})
        if job.form == "module":  # cast where it is built, from the export's weights: nothing to make now
            return Outcome(True, value={"form": "module", "precision": job.precision})
        fallback_tries = job.fallback_tries
        ranges = heldout = reference = labels = None
        noise_flipped: tuple[int, ...] = ()
        degenerate = (ctx.produced(job.reference_key).details or {}).get("note") if job.reference_key else None
        if degenerate and fallback_tries:  # fidelity against such a reference means nothing: nothing to fall back for
            fallback_tries = 0
            self.unjudged[job.key] = degenerate
        if job.calibration_key is not None:
            ranges = ctx.blob(ctx.produced(job.calibration_key).blobs["ranges"])
            if fallback_tries and job.heldout is not None and job.reference_key is not None:
                heldout, labels = ctx.rows(job.heldout)
                produced = ctx.produced(job.reference_key)
                reference = ctx.blob(produced.blobs["reference"])
                if job.confident_margin is not None:  # judged as eligibility will judge it: fp32's own flips forgiven
                    noise_flipped = tuple(((produced.details or {}).get("noise_floor") or {}).get("flipped") or [])
        return VariantCall(fp32=ctx.blob(fp32_sha), precision=job.precision, fp16=job.fp16 if job.precision == "fp16" else None,
                           ranges=ranges, layout=job.layout, heldout=heldout, reference=reference, labels=labels,
                           min_top1_agreement=job.min_top1_agreement, min_cosine=job.min_cosine, fallback_tries=fallback_tries,
                           max_float_fraction=job.max_float_fraction, confident_margin=job.confident_margin, noise_flipped=noise_flipped)

    def columns(self, job: VariantJob, value: Any) -> dict[str, Any]:
        details = value if isinstance(value, dict) else ({"fp16": job.fp16} if job.fp16 else None)
        if job.key in self.unjudged and details is not None:
            details = details | {"fallback": {"skipped": f"{self.unjudged.pop(job.key)}: quantized as calibrated, judged by speed"}}
        return {"model_key": job.export_key, "precision": job.precision, "method": job.method,
                "calibration_key": job.calibration_key, "details": details}

    def produced(self, row: Any) -> Produced:
        return replace(super().produced(row), details=row.details)
