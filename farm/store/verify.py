"""`farm verify`: the store's fsck, after git's `fsck` and SQLite's own `integrity_check`.

It checks that every artifact file's bytes hash to its name, that every artifact row has its file,
that every file under artifacts/ has a row, that the schema is at Alembic's head, and (SQLite)
that the database file itself is sound. `repair` deletes what is broken and marks the jobs whose
rows named a broken artifact as failed, so the next sweep redoes exactly those jobs (a sweep
redoes any job without an "ok" row); a result whose artifacts are fine is never touched.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from farm.store import schema
from farm.store.schema import artifact_columns
from farm.store.artifacts import PARTIAL, ArtifactStore
from farm.store.db import Store, head_revision, schema_revision, store_name, upgrade
from farm.store.record import STALE_S

SHA256_NAME = re.compile(r"[0-9a-f]{64}")
REDO_ERROR = "artifact {sha} was {state}: removed by `farm verify --repair`; the next sweep redoes this job"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the store, as one line: `kind: where: what`."""

    kind: str  # corrupt | missing | orphan | partial | schema | integrity
    where: str  # a path under the data dir, or the database
    what: str
    sha256: str | None = None  # corrupt and missing artifacts: what repair removes

    @property
    def line(self) -> str:
        return f"{self.kind}: {self.where}: {self.what}"


@dataclass
class Verdict:
    problems: list[Problem] = field(default_factory=list)
    artifacts: int = 0  # artifact files whose bytes were hashed
    bytes: int = 0
    revision: str | None = None
    head: str = ""
    integrity: str = "ok"  # "ok", "skipped on <dialect>", or the first problem

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def summary(self) -> str:
        return (f"ok: {self.artifacts} artifacts ({self.bytes / 1e6:.1f} MB) match their sha256, every row has its file "
                f"and every file its row, schema at {self.head}, integrity_check {self.integrity}")

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": [asdict(p) | {"line": p.line} for p in self.problems], "artifacts": self.artifacts,
                "bytes": self.bytes, "revision": self.revision, "head": self.head, "integrity": self.integrity}


def referencing_jobs(s: Session, sha256: str) -> list[tuple[str, str]]:
    """(stage, key) of every stage row that names the artifact."""
    found: list[tuple[str, str]] = []
    for stage, table in schema.STAGE_TABLES.items():
        for column in artifact_columns(table):
            found += [(stage, key) for key in s.scalars(select(table.key).where(column == sha256))]
    return found


def _integrity(store: Store) -> tuple[str, list[Problem]]:
    if store.engine.dialect.name != "sqlite":
        return f"skipped on {store.engine.dialect.name}", []
    where = store_name(store.location.url)
    try:
        with store.engine.connect() as connection:
            lines = [row[0] for row in connection.execute(text("PRAGMA integrity_check"))]
    except DBAPIError as exc:
        return "failed", [Problem("integrity", where, " ".join(str(exc.orig).split()))]
    if lines == ["ok"]:
        return "ok", []
    return "failed", [Problem("integrity", where, line) for line in lines]


def _files(root: Path) -> Iterator[Path]:
    if root.is_dir():
        yield from sorted(p for p in root.rglob("*") if not p.is_dir())


ArtifactState = Literal["ok", "missing", "corrupt"]


def artifact_state(artifacts: ArtifactStore, sha256: str, size_bytes: int | None = None) -> ArtifactState:
    """One artifact's file against its row, as `verify` checks it: there, of the recorded size (a cheap
    first look), and hashing to its name. What the dashboard shows beside a build, one engine at a time."""
    path = artifacts.path(sha256)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    if not path.is_file():
        return "missing"
    if size_bytes is not None and size != size_bytes:
        return "corrupt"
    return "ok" if artifacts.verify(sha256) else "corrupt"


def verify_store(store: Store) -> Verdict:
    """Every check; a database that cannot be read at all ends the checks with its integrity problem."""
    verdict = Verdict(head=head_revision())
    verdict.integrity, verdict.problems = _integrity(store)
    if verdict.problems:
        return verdict
    where = store_name(store.location.url)
    verdict.revision = schema_revision(store.engine)
    if verdict.revision != verdict.head:  # the artifact checks read this farm's tables: they wait for the upgrade
        verdict.problems.append(Problem("schema", where, f"at revision {verdict.revision or 'none'}, not {verdict.head} "
                                                        "(`farm verify --repair` upgrades it, then checks the artifacts)"))
        return verdict
    artifacts = store.artifacts
    data_dir = store.location.data_dir
    with store.session() as s:
        rows = {a.sha256: a for a in s.scalars(select(schema.Artifact))}
        for sha, row in sorted(rows.items()):
            path = artifacts.path(sha)
            shown = path.relative_to(data_dir).as_posix()
            state = artifact_state(artifacts, sha)
            if state == "missing":
                verdict.problems.append(Problem("missing", shown, f"no such file for the {row.kind} artifact row{_used_by(s, sha)}", sha))
                continue
            verdict.artifacts += 1
            verdict.bytes += path.stat().st_size
            if state == "corrupt":
                verdict.problems.append(Problem("corrupt", shown, f"its bytes do not hash to its name ({row.kind}){_used_by(s, sha)}", sha))
    for path in _files(artifacts.root):
        shown = path.relative_to(data_dir).as_posix()
        if path.name.startswith(PARTIAL):
            verdict.problems.append(Problem("partial", shown, "a write that never finished"))
        elif path.name not in rows or path != artifacts.path(path.name):
            verdict.problems.append(Problem("orphan", shown, "no artifact row names this file"))
    return verdict


def _used_by(s: Session, sha256: str) -> str:
    jobs = referencing_jobs(s, sha256)
    if not jobs:
        return ""
    shown = ", ".join(f"{stage} {key[:12]}" for stage, key in jobs[:5])
    return f"; used by {shown}" + (f" and {len(jobs) - 5} more" if len(jobs) > 5 else "")


@dataclass(frozen=True)
class Repaired:
    """What `repair` did, one line each; `left` are the problems it cannot mend."""

    done: list[str]
    left: list[Problem]


def live_sweeps(store: Store) -> list[int]:
    """Sweeps whose driver still beats: repairing under them could delete a file a row is about to name.

    The same rule as close_abandoned: "running" with a heartbeat (or start) within STALE_S."""
    cutoff = datetime.now(UTC) - timedelta(seconds=STALE_S)
    with store.session() as s:
        return list(s.scalars(select(schema.Sweep.id).where(
            schema.Sweep.status == "running", func.coalesce(schema.Sweep.heartbeat_at, schema.Sweep.started_at) >= cutoff)))


def repair_store(store: Store, verdict: Verdict) -> Repaired:
    """Mend what `verify` found: the schema upgraded; broken artifacts' rows and files removed and their
    jobs marked for redo (one transaction, then the files); orphans and partial writes deleted."""
    done: list[str] = []
    left: list[Problem] = []
    if any(p.kind == "schema" for p in verdict.problems):
        upgrade(store.engine)
        done.append(f"schema: upgraded to {head_revision()}")
    broken = {p.sha256: p for p in verdict.problems if p.sha256 is not None}
    if broken:
        with store.session() as s, s.begin():
            for sha, problem in broken.items():
                done += _forget(s, sha, problem.kind)
        for sha, problem in broken.items():
            with contextlib.suppress(FileNotFoundError):
                store.artifacts.path(sha).unlink()
            done.append(f"{problem.kind}: {problem.where}: removed")
    for problem in verdict.problems:
        if problem.kind in ("orphan", "partial"):
            with contextlib.suppress(FileNotFoundError):
                (store.location.data_dir / problem.where).unlink()
            done.append(f"{problem.kind}: {problem.where}: removed")
        elif problem.kind == "integrity":
            left.append(problem)
    return Repaired(done, left)


def _forget(s: Session, sha256: str, state: str) -> list[str]:
    """The artifact's row goes; every row naming it stops naming it, and a stage row that named it is
    no longer "ok", so the next sweep redoes its job. Returns one line per job marked."""
    marked: list[str] = []
    error = REDO_ERROR.format(sha=sha256[:12], state=state)
    for stage, table in schema.STAGE_TABLES.items():
        for column in artifact_columns(table):
            keys = list(s.scalars(select(table.key).where(column == sha256)))
            if keys:
                s.execute(update(table).where(table.key.in_(keys))
                          .values({column.key: None, "status": "failed", "error": error, "created_at": datetime.now(UTC)}))
                marked += [f"{stage} {key[:12]}: marked for redo" for key in keys]
    for cache in s.scalars(select(schema.TimingCache)):
        if sha256 in cache.sha256s:
            cache.sha256s = [old for old in cache.sha256s if old != sha256]
    s.flush()
    s.execute(delete(schema.Artifact).where(schema.Artifact.sha256 == sha256))
    return marked
