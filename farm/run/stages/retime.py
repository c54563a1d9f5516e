"""retime: the leading builds of one (model, target, batch size) timed again, interleaved on one node."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from farm.results.evidence import evidence_of
from farm.results.metrics import METRICS
from farm.results.select import Candidate
from farm.run.jobs import Job
from farm.run.stages.base import Context, Stage, built_engine
from farm.run.stages.benchmark import BenchmarkJob
from farm.run.stages.build import BuildJob
from farm.run.stages.fidelity import FidelityJob
from farm.run.tasks import Call, Outcome
from workers import stage_work
from workers.structs import Manifest, Target


@dataclass(frozen=True)
class RetimeSettings:
    """The interleaved re-timing of a group's leading builds (docs/verdicts.md)."""

    objective: str = "p50"  # what the sweep ranks by
    reach: float = 0.10  # builds whose benchmark is within this fraction of the leader's are re-timed with it
    max_candidates: int = 3
    rounds: int = 8  # A B C, A B C, ...: each round times every candidate once, in a rotated order
    window_s: float = 0.15  # how long each candidate runs per round
    alpha: float = 0.05  # the significance level of the winner's paired test


@dataclass(frozen=True)
class RetimeJob(Job):
    """The leading builds of one (model, target, batch size) timed again, interleaved on one node: a
    winner is declared only where its lead holds against drift and neighbours alike."""

    stage: ClassVar[str] = "retime"
    parents: ClassVar[tuple[str, ...]] = ("benchmark_keys", "fidelity_keys")
    runs_after_failures: ClassVar[bool] = True  # one failed build must not cost its group a verdict
    model: str
    target: Target
    batch_size: int
    benchmark_keys: tuple[str, ...]
    fidelity_keys: tuple[str, ...]  # of the same builds, in the same order (a missing one: "")
    constraints: dict[str, Any]  # fidelity floors and their rule (farm.results.select.Constraints) a contender must meet
    settings: RetimeSettings


@dataclass(frozen=True, kw_only=True)
class RetimeCall(Call):
    keys: tuple[str, ...]  # the contenders' build keys, the leader first
    engines: tuple[bytes, ...]  # of the same builds, in the same order
    manifests: tuple[Manifest, ...]
    caches: tuple[tuple[bytes, ...], ...]
    batch_size: int
    rounds: int
    window_s: float
    data_transfers: bool

    def run(self) -> dict[str, Any]:
        found = stage_work.retime_engines(list(zip(self.engines, self.manifests, self.caches, strict=True)), self.batch_size, self.rounds,
                                          self.window_s, self.data_transfers)
        return {"contenders": list(self.keys), "rounds": dict(zip(self.keys, found, strict=True)), "reason": None}


class RetimeStage(Stage[RetimeJob]):
    """The leading builds of a group, timed again interleaved on one node of the target."""

    job_type = RetimeJob

    def call(self, ctx: Context, job: RetimeJob) -> RetimeCall | Outcome:
        contenders, reason = self.contenders(ctx, job)
        if len(contenders) < 2:
            return Outcome(True, value={"contenders": [], "rounds": None, "reason": reason})
        engines = [built_engine(ctx, key) for key in contenders]
        return RetimeCall(keys=tuple(contenders), engines=tuple(e for e, _, _ in engines), manifests=tuple(m for _, m, _ in engines),
                          caches=tuple(c for _, _, c in engines), batch_size=job.batch_size, rounds=job.settings.rounds,
                          window_s=job.settings.window_s, data_transfers=ctx.spec.benchmark.data_transfers)

    def options(self, ctx: Context, job: RetimeJob) -> dict[str, Any]:
        return super().options(ctx, job) | ctx.timing_resources(job)

    def contenders(self, ctx: Context, job: RetimeJob) -> tuple[list[str], str]:
        """The build keys to re-time, the leader first: the eligible builds within reach of the leader."""
        found = []
        for bench_key, fid_key in zip(job.benchmark_keys, job.fidelity_keys, strict=True):
            bench = ctx.finished(bench_key)
            fid = ctx.finished(fid_key) if fid_key else None
            if bench is None:
                continue
            bench_job = ctx.job(bench_key)
            assert isinstance(bench_job, BenchmarkJob)
            build = ctx.job(bench_job.build_key)
            assert isinstance(build, BuildJob)
            fid_job = ctx.job(fid_key) if fid_key else None
            assert fid_job is None or isinstance(fid_job, FidelityJob)
            reference = ctx.finished(fid_job.reference_key) if fid_job is not None else None
            floor = (reference.details or {}) if reference is not None else {}
            found.append(Candidate(build.key, build.label, job.model, build.request.precision, build.request.backend,
                                   build.request.options, job.target.id, job.batch_size, None,
                                   (bench.values or {}) | ((fid.values if fid else None) or {}),
                                   evidence=evidence_of(fid.details if fid else None, floor.get("noise_floor"), floor.get("note"))))
        objective = job.settings.objective
        eligible = sorted((c for c in found if c.eligible(job.constraints)), key=lambda c: c.score(objective))  # type: ignore[arg-type]
        if len(eligible) < 2:
            return [], f"{len(eligible)} of {len(found)} benchmarked builds meet the constraints: nothing to compare"
        lead = eligible[0].value(objective) or 0.0
        higher = METRICS[objective].better == "higher"
        reach = [c for c in eligible[1:] if (value := c.value(objective)) is not None
                 and (value >= lead / (1 + job.settings.reach) if higher else value <= lead * (1 + job.settings.reach))]
        if not reach:
            return [], f"no eligible build within {job.settings.reach:.0%} of the leader: its lead is clear from the benchmarks"
        return [c.build_key for c in [eligible[0], *reach][: job.settings.max_candidates]], ""

    def columns(self, job: RetimeJob, value: Any) -> dict[str, Any]:
        found: dict[str, Any] = {"model": job.model, "target_id": job.target.id, "batch_size": job.batch_size,
                                 "objective": job.settings.objective, "settings": asdict(job.settings)}
        if value is not None:
            found |= {"contenders": value["contenders"], "rounds": value["rounds"], "reason": value["reason"] or None}
        return found
