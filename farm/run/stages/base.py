"""What every stage shares: the Stage base, what a finished job hands its children (Produced), and
what a stage may ask of the running sweep (Context)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

import ray

from farm.run import tasks
from farm.run.jobs import DataRef, Job
from farm.store.record import Blob, JobRow, Recorder
from workers.structs import Manifest

if TYPE_CHECKING:  # the spec's loader (pydantic) stays out of the Ray workers that unpickle a stage's call
    from farm.run.spec import SweepSpec


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

    # The next two give ray.ObjectRefs, typed Any: a call holds one where its worker wants the value, and
    # farm.run.tasks hands the worker the value.
    def blob(self, sha256: str) -> Any:
        """The artifact in Ray's object store, put there once per sweep."""
        ...

    def rows(self, data: DataRef) -> tuple[Any, Any]:
        """The inputs (and labels, or None) a DataRef names, loaded once per sweep."""
        ...

    def pin(self, job: Job) -> dict[str, Any]:
        """Ray options that run the job's task on the node farm.run.schedule.Placement chose for it."""
        ...

    def timing_resources(self, job: Job) -> dict[str, Any]:
        """What a timing asks Ray for: one GPU, or every CPU of its node, so nothing lands beside it."""
        ...


J = TypeVar("J", bound=Job)


class Stage(Generic[J]):
    """One pipeline stage: the call a job of `job_type` becomes, the Ray options it runs with, and the row
    its result becomes. `artifacts`: role -> (row column, artifact kind)."""

    job_type: ClassVar[type[Job]]
    artifacts: ClassVar[dict[str, tuple[str, str]]] = {}

    @property
    def name(self) -> str:
        return self.job_type.stage

    def call(self, ctx: Context, job: J) -> tasks.Call | tasks.Outcome:
        """The job's call, built once from the job and its parents' results (or its Outcome, when there is nothing to run)."""
        raise NotImplementedError

    def options(self, ctx: Context, job: J) -> dict[str, Any]:
        """Ray task options: retries and the node placement chose; a stage adds what it holds (a GPU, its whole host).
        The name is what Ray's dashboard and state API show for the one generic task."""
        return {"name": f"{self.name}_task", "max_retries": ctx.spec.limits.retries} | ctx.pin(job)

    def isolated(self, ctx: Context) -> bool:
        """Whether the call runs in a child process forked for it (farm.run.isolated)."""
        return False

    def submit(self, ctx: Context, job: J) -> ray.ObjectRef | tasks.Outcome:
        """Start the job's task (or finish it here, returning its Outcome, when there is nothing to run)."""
        call = self.call(ctx, job)
        if isinstance(call, tasks.Outcome):
            return call
        return tasks.submit(call, self.options(ctx, job), isolate=self.isolated(ctx), warm=ctx.spec.limits.isolate_builds)

    def columns(self, job: J, value: Any) -> dict[str, Any]:
        """The stage table's own columns, from the job and (when it succeeded) the worker's value."""
        return {}

    def after(self, ctx: Context, job: J, outcome: tasks.Outcome) -> None:
        """Anything to store beside the row before it is written (a build's timing cache)."""

    def row(self, job: J, outcome: tasks.Outcome, blobs: dict[str, Blob]) -> JobRow:
        shas = {role: blob.sha256 for role, blob in blobs.items()} | outcome.inherited
        columns = self.columns(job, outcome.value if outcome.ok or outcome.rejected else None)
        columns |= {column: shas.get(role) for role, (column, _kind) in self.artifacts.items()}
        return JobRow(self.name, job.key, outcome.ok, columns, outcome.error, outcome.log, outcome.seconds, outcome.node, outcome.device,
                      outcome.rejected)

    def produced(self, row: Any) -> Produced:
        return Produced({role: sha for role, (column, _kind) in self.artifacts.items() if (sha := getattr(row, column))})

    def kinds(self) -> dict[str, str]:
        return {role: kind for role, (_column, kind) in self.artifacts.items()}


def gpu_for(target_kind: str) -> dict[str, Any]:
    """A job on a GPU target holds one whole GPU (Ray sets CUDA_VISIBLE_DEVICES to it)."""
    return {"num_gpus": 1} if target_kind == "gpu" else {}


def built_engine(ctx: Context, build_key: str) -> tuple[Any, Manifest, tuple[bytes, ...]]:
    """A built engine for a job that runs it: its bytes (a ray.ObjectRef), its manifest and the builder caches it names."""
    produced = ctx.produced(build_key)
    assert produced.manifest is not None
    manifest = Manifest.from_json(produced.manifest)
    key = manifest.extra.get("builder_cache_key")
    shas = ctx.recorder.builder_caches(manifest.target, key) if key else []
    return ctx.blob(produced.blobs["engine"]), manifest, tuple(ctx.recorder.store.artifacts.get(sha) for sha in shas)
