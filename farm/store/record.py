"""The driver's writes: one transaction per finished job, artifacts first, then its row.

Also the read side of resume: `produced(job)` returns what a finished job left behind
(artifact hashes and the engine manifest), which is all its children need.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from farm.plan import BenchmarkJob, BuildJob, CalibrateJob, ExportJob, FidelityJob, Job, ReferenceJob, TargetGroup, VariantJob
from farm.store import schema
from farm.store.db import Store
from farm.tasks import Outcome
from workers.detection import DetectionFidelity

ROW_TYPES = schema.STAGE_TABLES


@dataclass
class Produced:
    """What a finished job hands to its children."""

    blobs: dict[str, str] = field(default_factory=dict)  # role -> artifact sha256
    manifest: dict[str, Any] | None = None
    details: dict[str, Any] | None = None  # a variant's: what its builds record in their manifests


class Recorder:
    def __init__(self, store: Store) -> None:
        self.store = store

    # --- sweeps -------------------------------------------------------------------------

    def start_sweep(self, name: str, spec_path: str, spec: dict[str, Any], jobs: list[Job]) -> int:
        with self.store.session() as s, s.begin():
            sweep = schema.Sweep(name=name, spec_path=spec_path, spec=spec, status="running")
            sweep.jobs = [schema.SweepJob(stage=j.stage, key=j.key, label=j.label[:256], state="pending") for j in jobs]
            s.add(sweep)
            s.flush()
            return sweep.id

    def finish_sweep(self, sweep_id: int, status: str) -> None:
        with self.store.session() as s, s.begin():
            s.execute(update(schema.Sweep).where(schema.Sweep.id == sweep_id).values(status=status, finished_at=datetime.now(UTC)))

    def mark(self, sweep_id: int, job: Job, state: str, error: str | None = None) -> None:
        with self.store.session() as s, s.begin():
            self._mark(s, sweep_id, job, state, error)

    def _mark(self, s: Session, sweep_id: int, job: Job, state: str, error: str | None) -> None:
        s.execute(
            update(schema.SweepJob)
            .where(schema.SweepJob.sweep_id == sweep_id, schema.SweepJob.stage == job.stage, schema.SweepJob.key == job.key)
            .values(state=state, error=error, updated_at=datetime.now(UTC))
        )

    def save_targets(self, groups: list[TargetGroup], descriptions: dict[str, dict[str, Any]]) -> None:
        with self.store.session() as s, s.begin():
            for group in groups:
                t = group.target
                s.merge(schema.Target(id=t.id, kind=t.kind, name=t.name, compute_capability=t.compute_capability,
                                      description=descriptions.get(t.id), last_seen=datetime.now(UTC)))

    # --- resume -------------------------------------------------------------------------

    def produced(self, job: Job) -> Produced | None:
        """What a job that already finished with status ok left behind, or None."""
        with self.store.session() as s:
            row = s.get(ROW_TYPES[job.stage], job.key)
            if row is None or row.status != "ok":
                return None
            return _produced(row)

    # --- timing caches (datacenter TensorRT) -------------------------------------------

    def timing_caches(self, target_id: str, version: str) -> list[str]:
        with self.store.session() as s:
            row = s.get(schema.TimingCache, (target_id, version))
            return list(row.sha256s) if row else []

    def update_timing_cache(self, target_id: str, version: str, given: list[str], returned: bytes) -> None:
        """The returned cache holds everything it was given; caches that arrived meanwhile stay to be combined."""
        sha = self.store.artifacts.put(returned)
        with self.store.session() as s, s.begin():
            self._artifact_row(s, sha, "timing_cache", len(returned))
            row = s.get(schema.TimingCache, (target_id, version))
            if row is None:
                s.add(schema.TimingCache(target_id=target_id, backend_version=version, sha256s=[sha], builds=1))
            else:
                row.sha256s = [sha] + [old for old in row.sha256s if old not in given and old != sha]
                row.builds += 1

    def _artifact_row(self, s: Session, sha: str, kind: str, size: int) -> None:
        if s.get(schema.Artifact, sha) is None:
            s.add(schema.Artifact(sha256=sha, kind=kind, size_bytes=size, path=self.store.artifacts.relative_path(sha)))

    # --- results ------------------------------------------------------------------------

    def record(self, sweep_id: int, job: Job, outcome: Outcome, inherited: dict[str, str] | None = None) -> Produced:
        """Store the outcome's artifacts and its row, and mark the job in the sweep, in one transaction."""
        kinds = {"onnx": "onnx", "checkpoint": "checkpoint", "engine": "engine", "reference": "reference", "ranges": "calibration"}
        blobs = dict(inherited or {})
        sizes = {}
        for role, data in outcome.blobs.items():
            blobs[role] = self.store.artifacts.put(data)
            sizes[role] = len(data)
        with self.store.session() as s, s.begin():
            for role in outcome.blobs:
                self._artifact_row(s, blobs[role], kinds.get(role, role), sizes[role])
            columns: dict[str, Any] = {
                "key": job.key,
                "status": "ok" if outcome.ok else "failed",
                "error": outcome.error,
                "log": outcome.log or None,
                "seconds": outcome.seconds,
                "node": outcome.node or None,
                "created_at": datetime.now(UTC),
            }
            row = ROW_TYPES[job.stage](**(columns | _fields(job, outcome, blobs)))
            s.merge(row)
            self._mark(s, sweep_id, job, "done" if outcome.ok else "failed", outcome.error)
        return _produced(row) if outcome.ok else Produced()


def _fields(job: Job, outcome: Outcome, blobs: dict[str, str]) -> dict[str, Any]:
    value = outcome.value if outcome.ok else None
    if isinstance(job, ExportJob):
        m = job.model
        fields: dict[str, Any] = {"name": m.name, "source": m.source, "weights": m.weights, "input_shape": list(m.input_shape),
                                  "onnx_sha256": blobs.get("onnx"), "checkpoint_sha256": blobs.get("checkpoint")}
        if value is not None:
            fields.update(opset=value.opset, inputs=[t.to_json() for t in value.inputs],
                          outputs=[t.to_json() for t in value.outputs], node_count=value.node_count)
        return fields
    if isinstance(job, VariantJob):
        details = value if isinstance(value, dict) else ({"fp16": job.fp16} if job.fp16 else None)
        return {"model_key": job.needs[0], "precision": job.precision, "method": job.method, "onnx_sha256": blobs.get("onnx"),
                "calibration_key": job.needs[1] if job.method else None, "details": details}
    if isinstance(job, CalibrateJob):
        return {"model_key": job.needs[0], "method": job.method, "percentile": job.percentile or None,
                "data_digest": job.data.digest, "samples": value["samples"] if value else None,
                "tensors": value["tensors"] if value else None, "ranges_sha256": blobs.get("ranges")}
    if isinstance(job, ReferenceJob):
        return {"model_key": job.needs[0], "data_digest": job.data.digest, "outputs_sha256": blobs.get("reference"),
                "samples": value["samples"] if value else None}
    if isinstance(job, BuildJob):
        r = job.request
        fields = {"variant_key": job.needs[0], "target_id": r.target.id, "backend": r.backend, "backend_version": job.backend_version,
                  "options": r.options, "label": job.label[:256], "engine_sha256": blobs.get("engine")}
        if value is not None:
            fields.update(manifest=value.manifest.to_json(), engine_bytes=len(outcome.blobs.get("engine", b"")),
                          peak_host_memory_bytes=value.peak_host_memory_bytes, seconds=value.seconds or outcome.seconds)
            if value.log:
                fields["log"] = value.log + ("\n" + outcome.log if outcome.log else "")
        return fields
    if isinstance(job, BenchmarkJob):
        fields = {"build_key": job.needs[0], "batch_size": job.batch_size, "settings": asdict(job.settings)}
        if value is not None:
            lat, gpu = value.latency, value.gpu_compute
            fields.update(iterations=value.iterations, wall_s=value.wall_s, throughput=value.throughput,
                          latency_mean=lat.mean, latency_p50=lat.median, latency_p90=lat.p90, latency_p95=lat.p95,
                          latency_p99=lat.p99, latency_min=lat.min, latency_max=lat.max, latency_cv=lat.cv,
                          gpu_compute_p50=gpu.median if gpu else None, gpu_compute_mean=gpu.mean if gpu else None,
                          gpu_compute_cv=gpu.cv if gpu else None, noisy=value.noisy, raw_ms=value.raw_ms,
                          raw_gpu_ms=value.raw_gpu_ms)
        return fields
    if isinstance(job, FidelityJob):
        fields = {"build_key": job.needs[0], "reference_key": job.needs[1]}
        if isinstance(value, DetectionFidelity):
            fields.update(samples=value.images, reference_boxes=value.reference_boxes, candidate_boxes=value.candidate_boxes,
                          box_recall=value.recall, box_precision=value.precision,
                          score_diff_mean=value.score_diff_mean, score_diff_max=value.score_diff_max, iou_mean=value.iou_mean)
        elif value is not None:
            fields.update(asdict(value))
        return fields
    raise TypeError(f"no row for stage {job.stage}")


def _produced(row: schema.JobColumns) -> Produced:
    if isinstance(row, schema.Model):
        blobs = {"onnx": row.onnx_sha256, "checkpoint": row.checkpoint_sha256}
    elif isinstance(row, schema.Variant):
        return Produced({"onnx": row.onnx_sha256} if row.onnx_sha256 else {}, details=row.details)
    elif isinstance(row, schema.Reference):
        blobs = {"reference": row.outputs_sha256}
    elif isinstance(row, schema.Calibration):
        blobs = {"ranges": row.ranges_sha256}
    elif isinstance(row, schema.Build):
        return Produced({"engine": row.engine_sha256} if row.engine_sha256 else {}, row.manifest)
    else:
        blobs = {}
    return Produced({k: v for k, v in blobs.items() if v})

