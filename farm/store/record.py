"""The driver's writes: one transaction per finished job, artifacts first, then its row.

The store knows rows, not jobs: a finished job arrives as a `JobRow` (its stage, key, the
columns every stage table shares and the stage's own columns) with the artifacts it made, and
`row(stage, key)` gives back what an earlier sweep left. farm.run.stages turns jobs into rows.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Update, bindparam, exists, func, inspect, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from farm.store import leases, schema
from farm.store.db import Store

ROW_TYPES = schema.STAGE_TABLES
HEARTBEAT_S = 5.0  # at most one heartbeat write per this many seconds; readers call a driver gone after STALE_S
# A running sweep whose driver wrote no heartbeat for this long lost its driver: kill -9, a crash, a full disk.
STALE_S = 60
CLAIM_TRIES = 3  # a lease released or taken over between a claim's two looks is looked at again, this often
SETTLED = ("done", *schema.ANSWERED_STATES)  # a sweep's job that needs nothing more: a re-run finds it in the store
RERUN_LOOKBACK = 10  # the newest sweeps of a name that a re-run may repeat: enough for a spec edited back and forth
GONE = "interrupted: its driver was gone (no heartbeat for over {seconds} s)"
STOPPED = "interrupted: the sweep was stopped (Ctrl-C or SIGTERM) while this job ran"
# Colour and cursor codes (Ray's RayTaskError colours its task name): stored text is read in files and pipes.
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


# A redo writes these stages' rows again under the same key: the finished row it replaces is kept (ReplacedRow),
# so that the sweeps before it can still be compared (`farm diff`) with what they measured.
KEPT_ON_REDO = ("build", "benchmark", "fidelity")


def row_columns(row: schema.JobColumns) -> dict[str, Any]:
    """A stage row's columns as JSON values (datetimes as ISO text), for a ReplacedRow."""
    found = {column.key: getattr(row, column.key) for column in inspect(type(row)).columns}
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in found.items()}


def plain(text: str | None) -> str | None:
    """The text without terminal escape codes."""
    return ANSI.sub("", text) if text else text

# One sweep job's row, by bound parameters: built once, not per job (building the expression cost as much
# as running it), and run without the ORM's session synchronisation (no SweepJob objects are loaded here).
_SWEEP_JOB = (update(schema.SweepJob)
              .where(schema.SweepJob.sweep_id == bindparam("job_sweep"), schema.SweepJob.stage == bindparam("job_stage"),
                     schema.SweepJob.key == bindparam("job_key"))
              .execution_options(synchronize_session=False))


def _running_unless_answered(table: type[schema.JobColumns]) -> Update:
    """A claimed job's sweep row marked running, unless the job's stage row was written at or after :since (another
    driver's answer): one statement for both, run after the lease's INSERT, so it sees every row committed before
    the lease was ours (PostgreSQL judges a statement's WHERE by the snapshot that statement starts with)."""
    answered = exists().where(table.key == bindparam("job_key"), table.created_at >= bindparam("since"))
    return (update(schema.SweepJob)
            .where(schema.SweepJob.sweep_id == bindparam("job_sweep"), schema.SweepJob.stage == bindparam("job_stage"),
                   schema.SweepJob.key == bindparam("job_key"), ~answered)
            .values(state="running", node=bindparam("job_node"), started_at=bindparam("job_started")))


# Built once per stage and run on the connection, as _SWEEP_JOB: an expression built per job cost as much as running it.
_RUNNING_UNLESS_ANSWERED = {stage: _running_unless_answered(table) for stage, table in ROW_TYPES.items()}


@dataclass(frozen=True)
class Blob:
    """An artifact in the store: its content hash, what it is, and its size."""

    sha256: str
    kind: str  # onnx, checkpoint, engine, reference, calibration, builder_cache, ...
    size: int


@dataclass(frozen=True)
class JobRow:
    """One finished job as the store keeps it."""

    stage: str
    key: str
    ok: bool
    columns: dict[str, Any]  # the stage table's own columns, artifact hashes included
    error: str | None = None  # one line
    log: str | None = None
    seconds: float | None = None
    node: str | None = None
    device: dict[str, Any] | None = None  # host, Ray node, GPU UUIDs
    rejected: bool = False  # not ok, but a finding: stored as status "rejected", and read back instead of retried

    @property
    def status(self) -> str:
        return "ok" if self.ok else "rejected" if self.rejected else "failed"


@dataclass(frozen=True)
class Claim:
    """What claiming a job found: it is this driver's to run (`ours`); or another driver wrote its row while this
    sweep ran (`answer`: use it as a cached result, failed or not); or another driver holds it (`holder`: wait
    for its row). None of the three: the job is free again (its owner let go without a row), claim it anew."""

    ours: bool = False
    answer: schema.JobColumns | None = None
    holder: leases.Holder | None = None


class Recorder:
    def __init__(self, store: Store, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.clock = clock  # what heartbeats are throttled by: seconds, only differences matter
        self.owner = str(leases.DriverId.mine())  # this driver, as its job leases name it
        self._beats: dict[int, float] = {}  # sweep id -> the clock's time of its last heartbeat write

    # --- sweeps -------------------------------------------------------------------------

    def start_sweep(self, name: str, spec_path: str, spec: dict[str, Any], jobs: Iterable[tuple[str, str, str]],
                    state: str = "pending") -> int:
        """A sweep row and one sweep-job row per (stage, key, label), in `state`."""
        with self.store.session() as s, s.begin():
            sweep = schema.Sweep(name=name, spec_path=spec_path, spec=spec, status="running", heartbeat_at=datetime.now(UTC))
            sweep.jobs = [schema.SweepJob(stage=stage, key=key, label=label[:256], state=state) for stage, key, label in jobs]
            s.add(sweep)
            s.flush()
            return sweep.id

    def rerun_of(self, name: str, jobs: Iterable[tuple[str, str]]) -> int | None:
        """The sweep named `name` that a re-run of exactly these (stage, key) jobs repeats, if one of the newest
        RERUN_LOOKBACK ended with every one of them settled: its re-run count goes up and its id comes back. None
        when no such sweep exists (the caller records a sweep of its own)."""
        wanted = set(jobs)
        with self.store.session() as s, s.begin():
            recent = s.scalars(select(schema.Sweep.id).where(schema.Sweep.name == name, schema.Sweep.status.in_(("finished", "failed")))
                               .order_by(schema.Sweep.id.desc()).limit(RERUN_LOOKBACK)).all()
            for sweep_id in recent:
                rows = s.execute(select(schema.SweepJob.stage, schema.SweepJob.key, schema.SweepJob.state)
                                 .where(schema.SweepJob.sweep_id == sweep_id)).all()
                if {(stage, key) for stage, key, _ in rows} == wanted and all(state in SETTLED for *_, state in rows):
                    s.execute(update(schema.Sweep).where(schema.Sweep.id == sweep_id)
                              .values(reruns=schema.Sweep.reruns + 1, last_rerun_at=datetime.now(UTC)))
                    return sweep_id
        return None

    def heartbeat(self, sweep_id: int) -> None:
        """The driver is alive: called from its loop as often as it likes, written at most every HEARTBEAT_S."""
        now = self.clock()
        if sweep_id in self._beats and now - self._beats[sweep_id] < HEARTBEAT_S:
            return
        self._beats[sweep_id] = now
        with self.store.session() as s, s.begin():
            # "running" again if a reader took this driver's silence (a stall over STALE_S) for its death
            s.execute(update(schema.Sweep).where(schema.Sweep.id == sweep_id, schema.Sweep.status.in_(("running", "interrupted")))
                      .values(heartbeat_at=datetime.now(UTC), status="running", finished_at=None))
            leases.renew(s, self.owner, datetime.now(UTC))  # every job this driver runs, in one statement

    def finish_sweep(self, sweep_id: int, status: str) -> str:
        """End the sweep; "finished" is stored as "failed" when not one of its jobs ended done or cached
        (every job failed or was blocked): a sweep that produced nothing must not read as a success."""
        with self.store.session() as s, s.begin():
            if status == "finished":
                ok = s.scalar(select(schema.SweepJob.id).where(schema.SweepJob.sweep_id == sweep_id,
                                                               schema.SweepJob.state.in_(("done", "cached"))).limit(1))
                status = "finished" if ok is not None else "failed"
            now = datetime.now(UTC)
            if status == "interrupted":  # its running jobs were stopped with it: none is left reading "running"
                s.execute(update(schema.SweepJob).where(schema.SweepJob.sweep_id == sweep_id, schema.SweepJob.state == "running")
                          .values(state="interrupted", error=STOPPED, updated_at=now).execution_options(synchronize_session=False))
            s.execute(update(schema.Sweep).where(schema.Sweep.id == sweep_id).values(status=status, finished_at=now, heartbeat_at=now))
            leases.release_all(s, self.owner)  # an interrupted sweep's jobs are free for another driver at once
        self._beats.pop(sweep_id, None)
        return status

    def started(self, sweep_id: int, stage: str, key: str, node: str) -> None:
        """A job was submitted to `node` (a Ray node id, or a host name): running since now."""
        with self.store.session() as s, s.begin():
            s.execute(_SWEEP_JOB.values(state="running", node=node[:128], started_at=datetime.now(UTC)),
                      {"job_sweep": sweep_id, "job_stage": stage, "job_key": key})

    # --- leases (farm.store.leases) ------------------------------------------------------

    def claim(self, sweep_id: int, stage: str, key: str, node: str, since: datetime) -> Claim:
        """Lease a job before submitting it to `node`; claimed, it is marked running in the same transaction.

        A row of the job written at or after `since` (this sweep's start) is another driver's answer: the claim
        is given back and the row returned. An older failed row is a failure to try again, as without leases."""
        for _ in range(CLAIM_TRIES):
            try:
                with self.store.session() as s, s.begin():
                    leases.claim(s, stage, key, self.owner, sweep_id, leases.now())
                    return self._claimed(s, sweep_id, stage, key, node, since)
            except IntegrityError:  # leased already: by whom, and may it be taken over?
                pass
            with self.store.session() as s, s.begin():
                now = leases.now()
                held = leases.holder(s, stage, key, now)
                if held is None:  # released since the insert failed: claim it again
                    continue
                if not held.may_take_over(self.owner):
                    return Claim(holder=held)
                if leases.take_over(s, stage, key, held.owner, self.owner, sweep_id, now):
                    return self._claimed(s, sweep_id, stage, key, node, since)
        return Claim(holder=leases.Holder("another driver (the lease changed hands while this one looked)", None, False))

    def _claimed(self, s: Session, sweep_id: int, stage: str, key: str, node: str, since: datetime) -> Claim:
        """The lease is ours in this transaction: unless another driver wrote the job's row meanwhile (a statement
        after the claim's, so it sees every row committed before the lease was ours), the job runs."""
        marked = s.connection().execute(_RUNNING_UNLESS_ANSWERED[stage], {
            "job_sweep": sweep_id, "job_stage": stage, "job_key": key, "job_node": node[:128], "job_started": datetime.now(UTC), "since": since})
        if marked.rowcount == 1:  # type: ignore[attr-defined]
            return Claim(ours=True)
        table = ROW_TYPES[stage]
        answer = s.scalars(select(table).where(table.key == key, table.created_at >= since)).first()
        if answer is None:  # no sweep row names the job (a caller outside a sweep): nothing answered it, it runs
            return Claim(ours=True)
        leases.release(s, stage, key, self.owner)
        return Claim(answer=answer)

    def look_again(self, jobs: list[tuple[str, str]], since: datetime) -> dict[str, Claim]:
        """Job key -> what a driver waiting on other drivers' jobs finds now: their rows (written at or after
        `since`), the leases still held, or neither (free: claim again). One query per stage and 500 keys."""
        answers: dict[str, schema.JobColumns] = {}
        by_stage: dict[str, list[str]] = {}
        for stage, key in jobs:
            by_stage.setdefault(stage, []).append(key)
        with self.store.session() as s:
            for stage, keys in by_stage.items():
                table = ROW_TYPES[stage]
                for start in range(0, len(keys), leases.LOOKUP_CHUNK):
                    chunk = keys[start : start + leases.LOOKUP_CHUNK]
                    answers |= {row.key: row for row in s.scalars(select(table).where(table.key.in_(chunk), table.created_at >= since))}
            held = leases.holders(s, [(stage, key) for stage, key in jobs if key not in answers], leases.now())
        found: dict[str, Claim] = {}
        for stage, key in jobs:
            holder = held.get((stage, key))
            found[key] = (Claim(answer=answers[key]) if key in answers
                          else Claim(holder=holder) if holder is not None and not holder.may_take_over(self.owner) else Claim())
        return found

    def mark(self, sweep_id: int, stage: str, key: str, state: str, error: str | None = None) -> None:
        with self.store.session() as s, s.begin():
            self._mark(s, sweep_id, stage, key, state, error)

    def _mark(self, s: Session, sweep_id: int, stage: str, key: str, state: str, error: str | None) -> None:
        s.execute(_SWEEP_JOB.values(state=state, error=error, updated_at=datetime.now(UTC)),
                  {"job_sweep": sweep_id, "job_stage": stage, "job_key": key})

    def save_targets(self, targets: Iterable[schema.Target]) -> None:
        with self.store.session() as s, s.begin():
            for target in targets:
                s.merge(target)

    # --- resume -------------------------------------------------------------------------

    def statuses(self, jobs: list[tuple[str, str]], wanted: tuple[str, ...] = ("ok", "rejected")) -> dict[str, str]:
        """Job key -> stored status, for the (stage, key) pairs whose row has one of `wanted` (one query per stage and 500 keys)."""
        found: dict[str, str] = {}
        with self.store.session() as s:
            for stage, chunk in _chunks_by_stage(jobs):
                table = ROW_TYPES[stage]
                rows = s.execute(select(table.key, table.status).where(table.key.in_(chunk), table.status.in_(wanted))).all()
                found |= {key: status for key, status in rows}
        return found

    def missing_artifacts(self, jobs: list[tuple[str, str]]) -> set[str]:
        """Keys of the (stage, key) pairs whose ok row names an artifact whose file is gone from the store (deleted
        by hand, a disk): such a row is no answer. One query per stage and 500 keys, and a stat per artifact;
        bytes that went bad in place are `farm verify`'s to find (it reads them all)."""
        gone: set[str] = set()
        with self.store.session() as s:
            for stage, chunk in _chunks_by_stage(jobs):
                table: Any = ROW_TYPES[stage]
                if not (columns := schema.artifact_columns(table)):
                    continue
                for key, *shas in s.execute(select(table.key, *columns).where(table.key.in_(chunk), table.status == "ok")):
                    if any(sha and not self.store.artifacts.path(sha).is_file() for sha in shas):
                        gone.add(key)
        return gone

    def finished(self, stage: str, key: str) -> schema.JobColumns | None:
        """The row of a job that already finished with status ok, or None."""
        return self._row(stage, key, "ok")

    def rejected(self, stage: str, key: str) -> schema.JobColumns | None:
        """The row of a job judged not viable with these very inputs (its key), or None: not tried again."""
        return self._row(stage, key, "rejected")

    def error(self, stage: str, key: str) -> str | None:
        """The stored one-line error of a job's row (a rejection's reason), or None."""
        with self.store.session() as s:
            row = s.get(ROW_TYPES[stage], key)
            return row.error if row is not None else None

    def _row(self, stage: str, key: str, status: str) -> schema.JobColumns | None:
        with self.store.session() as s:
            row = s.get(ROW_TYPES[stage], key)
            return row if row is not None and row.status == status else None

    # --- builder caches (TensorRT timing caches, Inductor's) -----------------------------

    def builder_caches(self, target_id: str, version: str) -> list[str]:
        with self.store.session() as s:
            row = s.get(schema.TimingCache, (target_id, version))
            return list(row.sha256s) if row else []

    def update_builder_cache(self, target_id: str, version: str, given: list[str], returned: bytes) -> None:
        """The returned cache holds everything it was given; caches that arrived meanwhile stay to be combined."""
        sha = self.store.artifacts.put(returned)
        with self.store.session() as s, s.begin():
            self._artifact_row(s, sha, "builder_cache", len(returned))
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

    def put_blobs(self, blobs: dict[str, bytes], kinds: dict[str, str]) -> dict[str, Blob]:
        """Write each artifact (content-addressed, so a repeat costs nothing) before its row names it."""
        return {role: Blob(self.store.artifacts.put(data), kinds.get(role, role), len(data)) for role, data in blobs.items()}

    def record(self, sweep_id: int, row: JobRow, blobs: Iterable[Blob] = ()) -> schema.JobColumns:
        """The artifacts' rows, the stage row and the sweep-job state, in one transaction."""
        with self.store.session() as s, s.begin():
            for blob in blobs:
                self._artifact_row(s, blob.sha256, blob.kind, blob.size)
            table: Any = ROW_TYPES[row.stage]  # a mapped class; mypy sees only the JobColumns mixin
            stored = table(
                key=row.key, status=row.status, error=plain(row.error), log=plain(row.log) or None,
                seconds=row.seconds, node=row.node or None, device=row.device, created_at=datetime.now(UTC), **row.columns,
            )
            if row.stage in KEPT_ON_REDO and (earlier := s.get(table, row.key)) is not None and earlier.status == "ok":
                s.add(schema.ReplacedRow(stage=row.stage, key=row.key, replaced_by=sweep_id, columns=row_columns(earlier)))
            s.merge(stored)
            self._mark(s, sweep_id, row.stage, row.key, "done" if row.ok else row.status, plain(row.error))
            if row.ok and row.device is None:  # answered by the driver itself (an fp32 variant): no node ran it, though the claim named one
                s.execute(_SWEEP_JOB.values(node=None), {"job_sweep": sweep_id, "job_stage": row.stage, "job_key": row.key})
            leases.release(s, row.stage, row.key, self.owner)  # with its row: a waiting driver finds one or the other
        return stored


def close_abandoned(engine: Engine, now: datetime | None = None) -> list[int]:
    """Store the truth about sweeps whose driver is gone: "running" with no heartbeat for STALE_S becomes
    "interrupted", and so do its running jobs; their finished_at is now, their heartbeat_at stays the last sign
    of life. Returns the sweeps closed. A driver that was only stalled sets its sweep running again (`heartbeat`)."""
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(seconds=STALE_S)
    with Session(engine) as s, s.begin():
        gone = list(s.scalars(select(schema.Sweep.id).where(
            schema.Sweep.status == "running", func.coalesce(schema.Sweep.heartbeat_at, schema.Sweep.started_at) < cutoff)))
        if gone:
            s.execute(update(schema.SweepJob).where(schema.SweepJob.sweep_id.in_(gone), schema.SweepJob.state == "running")
                      .values(state="interrupted", error=GONE.format(seconds=STALE_S), updated_at=now)
                      .execution_options(synchronize_session=False))
            s.execute(update(schema.Sweep).where(schema.Sweep.id.in_(gone)).values(status="interrupted", finished_at=now)
                      .execution_options(synchronize_session=False))
            leases.release_sweeps(s, gone)  # expired already (leases.LEASE_S == STALE_S): nothing waits on them
    return gone


def _chunks_by_stage(jobs: Iterable[tuple[str, str]], size: int = 500) -> Iterator[tuple[str, list[str]]]:
    """(stage, up to `size` keys) for the (stage, key) pairs: one IN (...) query each, under every database's limit."""
    by_stage: dict[str, list[str]] = {}
    for stage, key in jobs:
        by_stage.setdefault(stage, []).append(key)
    for stage, keys in by_stage.items():
        for start in range(0, len(keys), size):
            yield stage, keys[start : start + size]
