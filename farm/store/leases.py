"""Job leases: two drivers sharing one store never run the same job twice.

A driver claims a job (stage, key) before it submits it: one `job_leases` row, whose primary key makes
the claim atomic on every database (a second driver's INSERT fails; it never reads and then writes).
While the lease lives, any other driver that needs the job waits for the row its owner writes, and uses
it like a cached result. The owner renews all its leases with one UPDATE in its heartbeat (per driver,
not per job) and releases a lease in the transaction that writes the job's row, so a job is always
either leased or answered, never neither while it runs. A lease whose owner stopped renewing it for
LEASE_S seconds (killed, its machine gone) is taken over by an UPDATE that names the old owner, so two
drivers taking over at once cannot both win. A lease of a process of this very machine that no longer
exists is taken over at once: a driver killed here and started again does not wait out the expiry.

The store knows rows, never jobs: callers pass (stage, key) pairs and an open transaction.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import bindparam, delete, insert, select, tuple_, update
from sqlalchemy.orm import Session

from farm.store import schema

# A lease not renewed for this long belongs to a driver that is gone: the same silence after which
# readers call its sweep interrupted (farm.store.record.STALE_S), twelve of its 5 s heartbeats.
LEASE_S = 60.0
LOOKUP_CHUNK = 500  # (stage, key) pairs per query when a driver looks at the leases it waits on


@dataclass(frozen=True)
class DriverId:
    """Who holds a lease: one driver (one Recorder), unique across machines and processes.

    `machine` is this boot of this kernel and its process namespace (containers on one host have
    their own): within it `pid` names one process, which is how a lease of a killed local driver is
    recognised at once."""

    machine: str
    pid: int
    token: str

    @staticmethod
    def mine() -> DriverId:
        return DriverId(_machine(), os.getpid(), uuid.uuid4().hex[:12])

    def __str__(self) -> str:
        return f"{self.machine}/{self.pid}/{self.token}"

    @staticmethod
    def parse(text: str) -> DriverId | None:
        parts = text.rsplit("/", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        return DriverId(parts[0], int(parts[1]), parts[2])

    def is_gone(self) -> bool:
        """A driver of this machine whose process no longer exists (a driver elsewhere is never judged here)."""
        if self.machine != _machine():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, someone else's
            return False
        return False


def _machine() -> str:
    """This kernel's boot and this process namespace; the host name where /proc cannot say (not Linux)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid").removeprefix("pid:").strip("[]")
    except OSError:
        return socket.gethostname()[:64]
    return f"{socket.gethostname()[:64]}:{boot}:{namespace}"


@dataclass(frozen=True)
class Holder:
    """The driver that holds a job's lease, as another driver sees it."""

    owner: str
    sweep_id: int | None
    expired: bool  # not renewed for LEASE_S: anyone may take it over

    def may_take_over(self, me: str) -> bool:
        if self.owner == me or self.expired:
            return True
        owner = DriverId.parse(self.owner)
        return owner is not None and owner.is_gone()


def _expiry(now: datetime) -> datetime:
    return now + timedelta(seconds=LEASE_S)


# The per-job statements, built once and run on the session's connection with bound parameters: building an
# expression per job cost more than running it (as farm.store.record's _SWEEP_JOB).
_INSERT = insert(schema.JobLease)
_RELEASE = delete(schema.JobLease).where(schema.JobLease.stage == bindparam("lease_stage"), schema.JobLease.key == bindparam("lease_key"),
                                         schema.JobLease.owner == bindparam("lease_owner"))


def claim(s: Session, stage: str, key: str, owner: str, sweep_id: int, now: datetime) -> None:
    """Lease a free job: raises IntegrityError when another lease holds it (the caller's transaction is then lost).

    Whether another driver answered the job meanwhile is the caller's next statement, not part of this one: on
    PostgreSQL an INSERT that waited for the owner's release still judges a WHERE by the snapshot it started
    with, and would miss the row committed with that release."""
    s.connection().execute(_INSERT, {"stage": stage, "key": key, "owner": owner, "sweep_id": sweep_id, "heartbeat_at": now,
                                     "expires_at": _expiry(now)})


def holder(s: Session, stage: str, key: str, now: datetime) -> Holder | None:
    """Who holds the job's lease, or None when it is free."""
    found = s.execute(select(schema.JobLease.owner, schema.JobLease.sweep_id, schema.JobLease.expires_at < now)
                      .where(schema.JobLease.stage == stage, schema.JobLease.key == key)).first()
    return Holder(found[0], found[1], bool(found[2])) if found is not None else None


def take_over(s: Session, stage: str, key: str, previous: str, owner: str, sweep_id: int, now: datetime) -> bool:
    """Move the lease from `previous` to `owner`; False when `previous` no longer holds it (someone was quicker)."""
    moved = s.execute(update(schema.JobLease)
                      .where(schema.JobLease.stage == stage, schema.JobLease.key == key, schema.JobLease.owner == previous)
                      .values(owner=owner, sweep_id=sweep_id, heartbeat_at=now, expires_at=_expiry(now))
                      .execution_options(synchronize_session=False))
    return bool(moved.rowcount == 1)  # type: ignore[attr-defined]


def renew(s: Session, owner: str, now: datetime) -> None:
    """Every lease of `owner` lives LEASE_S more: one statement however many jobs it runs."""
    s.execute(update(schema.JobLease).where(schema.JobLease.owner == owner).values(heartbeat_at=now, expires_at=_expiry(now))
              .execution_options(synchronize_session=False))


def release(s: Session, stage: str, key: str, owner: str) -> None:
    """The job ended (its row is written in the same transaction): the lease goes, if `owner` still holds it."""
    s.connection().execute(_RELEASE, {"lease_stage": stage, "lease_key": key, "lease_owner": owner})


def release_all(s: Session, owner: str) -> None:
    """The driver's sweep ended, finished or interrupted: whatever it still holds is free for others at once."""
    s.execute(delete(schema.JobLease).where(schema.JobLease.owner == owner).execution_options(synchronize_session=False))


def release_sweeps(s: Session, sweep_ids: Iterable[int]) -> None:
    """The leases of sweeps whose drivers are gone (farm.store.record.close_abandoned)."""
    s.execute(delete(schema.JobLease).where(schema.JobLease.sweep_id.in_(list(sweep_ids))).execution_options(synchronize_session=False))


def holders(s: Session, jobs: list[tuple[str, str]], now: datetime) -> dict[tuple[str, str], Holder]:
    """The lease of each (stage, key) that has one: one query per LOOKUP_CHUNK jobs."""
    found: dict[tuple[str, str], Holder] = {}
    for start in range(0, len(jobs), LOOKUP_CHUNK):
        chunk = jobs[start : start + LOOKUP_CHUNK]
        rows = s.execute(select(schema.JobLease.stage, schema.JobLease.key, schema.JobLease.owner, schema.JobLease.sweep_id,
                                schema.JobLease.expires_at < now)
                         .where(tuple_(schema.JobLease.stage, schema.JobLease.key).in_(chunk))).all()
        found |= {(stage, key): Holder(owner, sweep_id, bool(expired)) for stage, key, owner, sweep_id, expired in rows}
    return found


def now() -> datetime:
    return datetime.now(UTC)
