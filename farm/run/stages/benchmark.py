"""benchmark: an engine's latency and throughput at one batch size, with its node to itself."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from farm.results.metrics import benchmark_columns
from farm.results.metrics import values as metric_values
from farm.run.jobs import Job
from farm.run.stages.base import Context, Produced, Stage, built_engine
from farm.run.tasks import Call
from workers import stage_work
from workers.bench import BenchSettings, Timings
from workers.structs import Manifest, Target


@dataclass(frozen=True)
class BenchmarkJob(Job):
    stage: ClassVar[str] = "benchmark"
    parents: ClassVar[tuple[str, ...]] = ("build_key",)
    build_key: str
    target: Target
    batch_size: int
    settings: BenchSettings


@dataclass(frozen=True, kw_only=True)
class BenchmarkCall(Call):
    engine: bytes
    manifest: Manifest
    batch_size: int
    settings: BenchSettings
    caches: tuple[bytes, ...]

    def run(self) -> Timings:
        return stage_work.benchmark_engine(self.engine, self.manifest, self.batch_size, self.settings, self.caches)


class BenchmarkStage(Stage[BenchmarkJob]):
    job_type = BenchmarkJob

    def call(self, ctx: Context, job: BenchmarkJob) -> BenchmarkCall:
        engine, manifest, caches = built_engine(ctx, job.build_key)
        return BenchmarkCall(engine=engine, manifest=manifest, batch_size=job.batch_size, settings=job.settings, caches=caches)

    def options(self, ctx: Context, job: BenchmarkJob) -> dict[str, Any]:
        return super().options(ctx, job) | ctx.timing_resources(job)

    def columns(self, job: BenchmarkJob, value: Any) -> dict[str, Any]:
        found: dict[str, Any] = {"build_key": job.build_key, "batch_size": job.batch_size, "settings": asdict(job.settings)}
        if value is not None:
            found |= benchmark_columns(value)
        return found

    def produced(self, row: Any) -> Produced:
        return Produced(values=metric_values(row, "benchmark"))
