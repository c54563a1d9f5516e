"""A sweep's progress, as `farm status` and the dashboard's Sweeps page show it: its status (a running sweep
whose driver stopped beating reads as interrupted), its jobs per stage and state, the nodes they ran on, the jobs
running now and those waiting on another driver's lease, the time left at this pace, and its failures.
Plain functions over a SQLAlchemy session, like farm.results.queries (the rest of the read side for people).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import Session

from farm.store import schema
from farm.store.record import STALE_S

STAGES = schema.STAGES
ROWS = schema.STAGE_TABLES

STATES = ("done", "cached", "rejected", "skipped", "failed", "blocked", "running", "pending", "interrupted")


def sweep_status(status: str, heartbeat: datetime | None, started: datetime, now: datetime | None = None,
                 finished: datetime | None = None) -> str:
    """What a person is told of a sweep: its stored status, except that a "running" sweep whose driver
    stopped beating is "interrupted (driver gone since HH:MM:SS UTC)", and so is one stored as interrupted
    for that reason (farm.store.record.close_abandoned: finished long after its last heartbeat)."""
    if status == "interrupted" and finished is not None:
        last = heartbeat or started
        if _naive(finished) - _naive(last) > timedelta(seconds=STALE_S):
            return f"interrupted (driver gone since {last:%H:%M:%S} UTC)"
    if status != "running":
        return status
    last = heartbeat or started  # a sweep recorded before heartbeats existed: its start is all we know
    now = now or datetime.now(UTC)
    if last.tzinfo is None:  # SQLite keeps naive UTC
        now = now.replace(tzinfo=None)
    if now - last <= timedelta(seconds=STALE_S):
        return status
    return f"interrupted (driver gone since {last:%H:%M:%S} UTC)"


def _naive(moment: datetime) -> datetime:
    """UTC without its zone: SQLite gives naive UTC back, PostgreSQL aware."""
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


@dataclass(frozen=True)
class Failure:
    stage: str
    label: str
    error: str | None
    log: str | None
    node: str | None


def stage_progress(s: Session, sweep_id: int) -> dict[str, dict[str, int]]:
    """Per stage, in pipeline order: how many of its jobs are in each state (every state present)."""
    rows = s.execute(
        select(schema.SweepJob.stage, schema.SweepJob.state, func.count())
        .where(schema.SweepJob.sweep_id == sweep_id)
        .group_by(schema.SweepJob.stage, schema.SweepJob.state)
    ).all()
    counts: dict[str, dict[str, int]] = {}
    for stage, state, n in rows:
        counts.setdefault(stage, {})[state] = n
    order = [st for st in STAGES if st in counts] + sorted(set(counts) - set(STAGES))
    return {st: {state: counts[st].get(state, 0) for state in STATES} for st in order}


@dataclass(frozen=True)
class NodeLoad:
    """One node's share of a sweep: jobs running on it now, and those it finished or failed."""

    node: str
    running: int
    done: int
    failed: int


@dataclass(frozen=True)
class RunningJob:
    stage: str
    label: str
    node: str | None
    started: datetime | None


def node_loads(s: Session, sweep_id: int) -> list[NodeLoad]:
    """Per node that ran any of the sweep's jobs, busiest first."""
    job = schema.SweepJob
    rows = s.execute(
        select(job.node,
               func.sum(case((job.state == "running", 1), else_=0)),
               func.sum(case((job.state == "done", 1), else_=0)),
               func.sum(case((job.state == "failed", 1), else_=0)))
        .where(job.sweep_id == sweep_id, job.node.is_not(None))
        .group_by(job.node)
    ).all()
    loads = [NodeLoad(str(node), int(r or 0), int(d or 0), int(f or 0)) for node, r, d, f in rows]
    return sorted(loads, key=lambda n: (-n.running, -n.done, n.node))


def running(s: Session, sweep_id: int, limit: int = 20) -> list[RunningJob]:
    """The sweep's running jobs, longest running first."""
    job = schema.SweepJob
    rows = s.execute(
        select(job.stage, job.label, job.node, job.started_at)
        .where(job.sweep_id == sweep_id, job.state == "running")
        .order_by(job.started_at, job.id).limit(limit)
    ).all()
    return [RunningJob(*row) for row in rows]


@dataclass(frozen=True)
class WaitingJob:
    """A pending job of this sweep that another driver holds the lease of (farm.store.leases): this sweep
    uses the row that driver writes, or runs the job itself once the lease is let go of or expires."""

    stage: str
    label: str
    held_by_sweep: int | None  # the holder's sweep (None for a lease written without one)
    expires_at: datetime


def waiting(s: Session, sweep_id: int, limit: int = 20) -> list[WaitingJob]:
    """The sweep's pending jobs that another sweep's driver holds, soonest expiring first."""
    job, lease = schema.SweepJob, schema.JobLease
    rows = s.execute(
        select(job.stage, job.label, lease.sweep_id, lease.expires_at)
        .join(lease, (lease.stage == job.stage) & (lease.key == job.key))
        .where(job.sweep_id == sweep_id, job.state == "pending", or_(lease.sweep_id.is_(None), lease.sweep_id != sweep_id))
        .order_by(lease.expires_at, job.id).limit(limit)
    ).all()
    return [WaitingJob(*row) for row in rows]


def remaining_seconds(sweep: schema.Sweep, by_stage: dict[str, dict[str, int]], now: datetime) -> float | None:
    """At the pace so far, how long the sweep's pending and running jobs take: elapsed time per job that
    ran here (cached jobs cost nothing) times the jobs left. None before the first job finishes."""
    ran = sum(states["done"] + states["failed"] + states["blocked"] + states["rejected"] + states["skipped"] for states in by_stage.values())
    left = sum(states["pending"] + states["running"] for states in by_stage.values())
    if not ran or not left or sweep.status != "running":
        return None
    started = sweep.started_at if sweep.started_at.tzinfo else sweep.started_at.replace(tzinfo=now.tzinfo)
    return (now - started).total_seconds() / ran * left


def failures(s: Session, sweep_id: int, state: str = "failed") -> list[Failure]:
    """The sweep's failed jobs (or those in `state`: "rejected", judged not viable) with the error and log their stage row kept."""
    found = []
    for job in s.scalars(
        select(schema.SweepJob).where(schema.SweepJob.sweep_id == sweep_id, schema.SweepJob.state == state).order_by(schema.SweepJob.id)
    ):
        row = s.get(ROWS[job.stage], job.key) if job.stage in ROWS else None
        found.append(Failure(job.stage, job.label, (row.error if row else None) or job.error, row.log if row else None,
                             row.node if row else None))
    return found
