"""The farm's tables, as typed SQLAlchemy 2.0 ORM classes.

Every stage result is keyed by its job key (a content hash of its inputs), so a finished row
is the cache: a sweep that finds a row with status "ok" for a key does not redo that job.
Big outputs (ONNX files, engines, reference outputs) are content-addressed files in the
artifact store; rows keep their sha256.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Column, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeEngine


def utcnow() -> datetime:
    return datetime.now(UTC)


def free_text(sqlite_length: int) -> TypeEngine[str]:
    """Text of any length, for what a person writes (names, paths, sources): PostgreSQL enforces a
    VARCHAR's length, so these are TEXT there (migration 0006). SQLite never enforces it and keeps the
    VARCHAR it was created with: changing it would rebuild tables that other tables reference."""
    return Text().with_variant(String(sqlite_length), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Artifact(Base):
    __tablename__ = "artifacts"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # onnx, checkpoint, engine, reference, ...
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(String(256))  # relative to the artifact root
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class JobColumns:
    """What every stage row records about the job that produced it."""

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    # ok | failed | rejected (judged and found not viable, e.g. int8 the fallback refused: a finding, kept and not retried)
    status: Mapped[str] = mapped_column(String(16), index=True)
    error: Mapped[str | None] = mapped_column(Text, default=None)  # one line
    log: Mapped[str | None] = mapped_column(Text, default=None)
    seconds: Mapped[float | None] = mapped_column(Float, default=None)  # the job's own time on the worker
    node: Mapped[str | None] = mapped_column(String(128), default=None)  # hostname that ran it
    # where exactly: {"host", "ray_node", "gpus": [GPU UUIDs the job held]}
    device: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Sweep(Base):
    __tablename__ = "sweeps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(free_text(128), index=True)
    spec_path: Mapped[str] = mapped_column(free_text(512))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # the validated spec, as run
    status: Mapped[str] = mapped_column(String(16))  # running | finished | failed (no job ok) | interrupted
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    # The driver's last sign of life (every few seconds while it runs): a "running" sweep whose
    # heartbeat is old lost its driver (kill -9, a full disk) and is shown as interrupted.
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    # Sweeps of the same jobs answered wholly from the store since (nothing ran): counted here, not added as sweeps,
    # so that the newest sweep is the newest that did work.
    reruns: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_rerun_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)

    jobs: Mapped[list[SweepJob]] = relationship(back_populates="sweep", cascade="all, delete-orphan")


# How a sweep's job ends when the store answered it and nothing ran: a sweep whose every job ended so did no work.
ANSWERED_STATES = ("cached", "rejected", "skipped")


class SweepJob(Base):
    """One job of one sweep and how it ended in that sweep: the progress and history view."""

    __tablename__ = "sweep_jobs"
    __table_args__ = (UniqueConstraint("sweep_id", "stage", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id"), index=True)
    stage: Mapped[str] = mapped_column(String(16))  # export | variant | reference | build | benchmark | fidelity
    key: Mapped[str] = mapped_column(String(64), index=True)
    # what a person reads: "resnet18 fp32 onnxruntime[...] @ cpu:..."; cut to 256 by farm.store.record (PostgreSQL enforces it)
    label: Mapped[str] = mapped_column(String(256))
    state: Mapped[str] = mapped_column(String(16))  # pending | running | done | cached | rejected | failed | blocked | skipped
    error: Mapped[str | None] = mapped_column(Text, default=None)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    # where and since when it runs (or ran): what `farm status` shows of a sweep in progress
    node: Mapped[str | None] = mapped_column(String(128), default=None)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)

    sweep: Mapped[Sweep] = relationship(back_populates="jobs")


class JobLease(Base):
    """A driver's claim on a job it is about to run (farm.store.leases): while the lease lives, no other
    driver sharing the store runs that job; it waits for the row the owner writes. One row per (stage, key)
    makes the claim atomic: an INSERT that a second driver's INSERT cannot also win."""

    __tablename__ = "job_leases"

    stage: Mapped[str] = mapped_column(String(16), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    # No index but the key: the table holds only the leases of jobs running now (a released lease is deleted),
    # and every index more is one more write in each claim and release.
    owner: Mapped[str] = mapped_column(String(256))  # farm.store.leases.DriverId: unique per driver
    sweep_id: Mapped[int | None] = mapped_column(Integer, default=None)  # the owner's sweep, for people
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # then any driver may take it over


class Model(JobColumns, Base):
    """A network exported to ONNX once (the export stage)."""

    __tablename__ = "models"

    name: Mapped[str] = mapped_column(free_text(128), index=True)
    source: Mapped[str] = mapped_column(free_text(512))
    weights: Mapped[str | None] = mapped_column(free_text(64), default=None)
    input_shape: Mapped[list[Any]] = mapped_column(JSON)
    opset: Mapped[int | None] = mapped_column(Integer, default=None)
    inputs: Mapped[list[Any] | None] = mapped_column(JSON, default=None)
    outputs: Mapped[list[Any] | None] = mapped_column(JSON, default=None)
    node_count: Mapped[int | None] = mapped_column(Integer, default=None)
    onnx_sha256: Mapped[str | None] = mapped_column(ForeignKey("artifacts.sha256"), default=None)
    checkpoint_sha256: Mapped[str | None] = mapped_column(ForeignKey("artifacts.sha256"), default=None)


class Calibration(JobColumns, Base):
    """Activation ranges of a model's fp32 graph over the calibration rows: computed once per
    (model, method, calibration data, sample count) and reused by every variant and target."""

    __tablename__ = "calibrations"

    model_key: Mapped[str] = mapped_column(ForeignKey("models.key"), index=True)
    method: Mapped[str] = mapped_column(String(32))
    percentile: Mapped[float | None] = mapped_column(Float, default=None)
    data_digest: Mapped[str] = mapped_column(String(64))
    samples: Mapped[int | None] = mapped_column(Integer, default=None)
    tensors: Mapped[int | None] = mapped_column(Integer, default=None)  # activations with a range
    ranges_sha256: Mapped[str | None] = mapped_column(ForeignKey("artifacts.sha256"), default=None)


class Variant(JobColumns, Base):
    """The model's ONNX after a precision transform (fp32 is the export itself)."""

    __tablename__ = "variants"

    model_key: Mapped[str] = mapped_column(ForeignKey("models.key"), index=True)
    precision: Mapped[str] = mapped_column(String(16))
    method: Mapped[str | None] = mapped_column(String(32), default=None)  # int8/fp8 calibration method
    calibration_key: Mapped[str | None] = mapped_column(ForeignKey("calibrations.key"), default=None)
    # fp16 options; for int8/fp8 the CPU fidelity of the plain variant, and what the fallback kept in float and why
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    onnx_sha256: Mapped[str | None] = mapped_column(ForeignKey("artifacts.sha256"), default=None)

    model: Mapped[Model] = relationship()


class Target(Base):
    __tablename__ = "targets"

    id: Mapped[str] = mapped_column(String(256), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))  # cpu | gpu | rtx
    name: Mapped[str] = mapped_column(String(256))
    compute_capability: Mapped[str | None] = mapped_column(String(8), default=None)
    description: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)  # a node's DeviceInfo
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class TimingCache(Base):
    """Builder caches per (target, cache key): what the next build there starts from. The key is a
    backend's (workers.backends.base.cache_key): the TensorRT version for datacenter TensorRT timing
    caches, "inductor <torch version>" for torch.compile's caches. (The table kept its first name.)

    Builds that ran at the same time each return a cache; the driver cannot combine them (it
    may have neither TensorRT nor torch), so it keeps every cache not yet combined and the next
    build on that target combines them before it starts.
    """

    __tablename__ = "timing_caches"

    target_id: Mapped[str] = mapped_column(ForeignKey("targets.id"), primary_key=True)
    backend_version: Mapped[str] = mapped_column(String(64), primary_key=True)
    sha256s: Mapped[list[Any]] = mapped_column(JSON)
    builds: Mapped[int] = mapped_column(Integer, default=0)  # builds that returned an updated cache
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class Reference(JobColumns, Base):
    """The fp32 model's outputs on the fidelity inputs: what every build is compared with."""

    __tablename__ = "references"

    model_key: Mapped[str] = mapped_column(ForeignKey("models.key"), index=True)
    data_digest: Mapped[str] = mapped_column(String(64))
    samples: Mapped[int | None] = mapped_column(Integer, default=None)
    outputs_sha256: Mapped[str | None] = mapped_column(ForeignKey("artifacts.sha256"), default=None)
    # fp32 against itself on the same images shifted by 2 pixels (workers.fidelity.Fidelity as a dict, or a
    # detector's box agreement): the disagreement no candidate can be blamed for
    noise_floor: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    note: Mapped[str | None] = mapped_column(Text, default=None)  # "reference degenerate: ..." where it cannot judge


class Build(JobColumns, Base):
    """One engine: variant + backend + build options + target."""

    __tablename__ = "builds"

    variant_key: Mapped[str] = mapped_column(ForeignKey("variants.key"), index=True)
    target_id: Mapped[str] = mapped_column(ForeignKey("targets.id"), index=True)
    backend: Mapped[str] = mapped_column(String(32), index=True)
    backend_version: Mapped[str | None] = mapped_column(String(64), default=None)
    options: Mapped[dict[str, Any]] = mapped_column(JSON)
    label: Mapped[str] = mapped_column(String(256))  # cut to 256 by farm.run.stages, as sweep_jobs.label
    manifest: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    engine_sha256: Mapped[str | None] = mapped_column(ForeignKey("artifacts.sha256"), default=None)
    engine_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    peak_host_memory_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)  # grown above the worker's own
    peak_device_memory_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)  # GPU builds: this process's on its GPU

    variant: Mapped[Variant] = relationship()
    target: Mapped[Target] = relationship()
    benchmarks: Mapped[list[Benchmark]] = relationship(back_populates="build")
    fidelity: Mapped[list[Fidelity]] = relationship(back_populates="build")


class Benchmark(JobColumns, Base):
    """Timings of one build at one batch size (milliseconds per iteration)."""

    __tablename__ = "benchmarks"

    build_key: Mapped[str] = mapped_column(ForeignKey("builds.key"), index=True)
    batch_size: Mapped[int] = mapped_column(Integer)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)
    iterations: Mapped[int | None] = mapped_column(Integer, default=None)
    wall_s: Mapped[float | None] = mapped_column(Float, default=None)
    throughput: Mapped[float | None] = mapped_column(Float, default=None)  # samples per second
    latency_mean: Mapped[float | None] = mapped_column(Float, default=None)
    latency_p50: Mapped[float | None] = mapped_column(Float, default=None)
    latency_p90: Mapped[float | None] = mapped_column(Float, default=None)
    latency_p95: Mapped[float | None] = mapped_column(Float, default=None)
    latency_p99: Mapped[float | None] = mapped_column(Float, default=None)
    latency_min: Mapped[float | None] = mapped_column(Float, default=None)
    latency_max: Mapped[float | None] = mapped_column(Float, default=None)
    latency_cv: Mapped[float | None] = mapped_column(Float, default=None)
    gpu_compute_p50: Mapped[float | None] = mapped_column(Float, default=None)
    gpu_compute_mean: Mapped[float | None] = mapped_column(Float, default=None)
    gpu_compute_cv: Mapped[float | None] = mapped_column(Float, default=None)
    noisy: Mapped[bool | None] = mapped_column(Boolean, default=None)
    raw_ms: Mapped[list[Any] | None] = mapped_column(JSON, default=None)
    raw_gpu_ms: Mapped[list[Any] | None] = mapped_column(JSON, default=None)
    converged: Mapped[bool | None] = mapped_column(Boolean, default=None)  # the stability windows agreed in time
    window_medians: Mapped[list[Any] | None] = mapped_column(JSON, default=None)
    latency_p50_low: Mapped[float | None] = mapped_column(Float, default=None)  # 95% bootstrap interval on p50
    latency_p50_high: Mapped[float | None] = mapped_column(Float, default=None)
    data_transfers: Mapped[bool | None] = mapped_column(Boolean, default=None)
    clocks: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)  # GPU SM clock at start, settled, end
    peak_host_memory_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)  # opening and timing the engine
    peak_device_memory_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)  # GPU benchmarks: this process's

    build: Mapped[Build] = relationship(back_populates="benchmarks")


class Fidelity(JobColumns, Base):
    """Agreement of one build's outputs with the fp32 reference on real inputs."""

    __tablename__ = "fidelity"

    build_key: Mapped[str] = mapped_column(ForeignKey("builds.key"), index=True)
    reference_key: Mapped[str] = mapped_column(ForeignKey("references.key"))
    samples: Mapped[int | None] = mapped_column(Integer, default=None)
    top1_agreement: Mapped[float | None] = mapped_column(Float, default=None)
    top5_agreement: Mapped[float | None] = mapped_column(Float, default=None)
    cosine_mean: Mapped[float | None] = mapped_column(Float, default=None)
    cosine_min: Mapped[float | None] = mapped_column(Float, default=None)
    max_abs_error: Mapped[float | None] = mapped_column(Float, default=None)
    accuracy: Mapped[float | None] = mapped_column(Float, default=None)  # labelled top-1 accuracy, where labels exist
    reference_accuracy: Mapped[float | None] = mapped_column(Float, default=None)
    labelled: Mapped[int | None] = mapped_column(Integer, default=None)
    nonfinite: Mapped[int | None] = mapped_column(Integer, default=None)
    # detectors: boxes matched to the reference's at IoU >= 0.5 with the same label
    reference_boxes: Mapped[int | None] = mapped_column(Integer, default=None)
    candidate_boxes: Mapped[int | None] = mapped_column(Integer, default=None)
    box_recall: Mapped[float | None] = mapped_column(Float, default=None)
    box_precision: Mapped[float | None] = mapped_column(Float, default=None)
    score_diff_mean: Mapped[float | None] = mapped_column(Float, default=None)
    score_diff_max: Mapped[float | None] = mapped_column(Float, default=None)
    iou_mean: Mapped[float | None] = mapped_column(Float, default=None)
    # the evidence (docs/verdicts.md): agreed of samples (detectors: matched of reference boxes) with its 95%
    # Wilson interval, KL(reference || candidate), and per image which flipped and the reference's softmax margin
    agreed: Mapped[int | None] = mapped_column(Integer, default=None)
    agreement_low: Mapped[float | None] = mapped_column(Float, default=None)
    agreement_high: Mapped[float | None] = mapped_column(Float, default=None)
    kl_mean: Mapped[float | None] = mapped_column(Float, default=None)
    evidence: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)  # {"flipped": [i], "margins": [p1-p2]}
    reference_note: Mapped[str | None] = mapped_column(Text, default=None)  # the reference is degenerate: nothing here means much

    build: Mapped[Build] = relationship(back_populates="fidelity")


class Retime(JobColumns, Base):
    """A group's leading builds timed again, interleaved on one node (farm.results.verdict reads the verdict off it)."""

    __tablename__ = "retimes"

    model: Mapped[str] = mapped_column(free_text(128), index=True)
    target_id: Mapped[str] = mapped_column(ForeignKey("targets.id"), index=True)
    batch_size: Mapped[int] = mapped_column(Integer)
    objective: Mapped[str] = mapped_column(String(16))
    # build keys, the benchmark's leader first; empty when fewer than two builds were eligible or within reach
    contenders: Mapped[list[Any] | None] = mapped_column(JSON, default=None)
    rounds: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)  # build key -> {"median": [ms per round], "p99", "mean"}
    reason: Mapped[str | None] = mapped_column(Text, default=None)  # why there was nothing to re-time
    settings: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class Baseline(Base):
    """A named sweep that later sweeps are compared with (`farm baseline save`, `farm diff --baseline`). It names
    the sweep rather than copying its rows: a redo keeps every row it replaces (ReplacedRow), so the sweep's
    results as it saw them stay readable however often its jobs are run again."""

    __tablename__ = "baselines"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(free_text(128), unique=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ReplacedRow(Base):
    """A finished build, benchmark or fidelity row as it was before a redo (--redo-from, --force) wrote the same
    key again: the sweeps before `replaced_by` saw these values, and `farm diff` reads them back."""

    __tablename__ = "replaced_rows"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    stage: Mapped[str] = mapped_column(String(16))
    key: Mapped[str] = mapped_column(String(64), index=True)
    replaced_by: Mapped[int] = mapped_column(ForeignKey("sweeps.id"))  # the sweep whose redo replaced it
    replaced_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    columns: Mapped[dict[str, Any]] = mapped_column(JSON)  # the row's columns, datetimes as ISO text


# Each pipeline stage's table, in pipeline order: the one list the driver, the CLI and the dashboard share.
STAGE_TABLES: dict[str, type[JobColumns]] = {
    "export": Model,
    "reference": Reference,
    "calibrate": Calibration,
    "variant": Variant,
    "build": Build,
    "benchmark": Benchmark,
    "fidelity": Fidelity,
    "retime": Retime,
}
STAGES = tuple(STAGE_TABLES)


def artifact_columns(table: Any) -> list[Column[Any]]:
    """The columns of a table that name an artifact (a foreign key to artifacts.sha256)."""
    return [c for c in table.__table__.columns if any(fk.column.table.name == "artifacts" for fk in c.foreign_keys)]
