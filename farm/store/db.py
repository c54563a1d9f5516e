"""Where results live: a database (SQLite in WAL mode by default; PostgreSQL for a fleet; any
SQLAlchemy URL) and an artifact folder, which stays under the data dir whatever the database.

The driver is the only writer; the dashboard opens the same database read-only. The schema
is created and upgraded by Alembic, never by `create_all`, so an old farm-data folder is
migrated in place when a newer farm opens it. Two farms opening one new store at once take
turns: a file lock beside a SQLite database, an advisory lock on PostgreSQL.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from farm.store.artifacts import ArtifactStore

DEFAULT_DATA_DIR = "farm-data"
MIGRATIONS = Path(__file__).with_name("migrations")
# The pg_advisory_xact_lock key every farm takes before it migrates a PostgreSQL store ("farm" in ASCII).
MIGRATION_LOCK_KEY = 0x6661726D


class StoreError(Exception):
    """The store's folders cannot be made or written (a read-only medium, a path through a file): one line."""


@dataclass(frozen=True)
class StoreLocation:
    data_dir: Path
    url: str

    @staticmethod
    def resolve(data_dir: str | os.PathLike[str] | None = None, url: str | None = None) -> StoreLocation:
        """Explicit arguments first, then FARM_DATA_DIR / FARM_DB_URL, then ./farm-data/farm.db."""
        root = Path(data_dir or os.environ.get("FARM_DATA_DIR") or DEFAULT_DATA_DIR).absolute()
        return StoreLocation(root, url or os.environ.get("FARM_DB_URL") or f"sqlite:///{root / 'farm.db'}")


@dataclass
class Store:
    engine: Engine
    sessions: sessionmaker[Session]
    artifacts: ArtifactStore
    location: StoreLocation

    def session(self) -> Session:
        return self.sessions()

    def close(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(readonly: bool) -> Any:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=30000")
        if not readonly:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return on_connect


def _postgres_session(readonly: bool) -> Any:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        # Times come back in UTC whatever the server's TimeZone, like SQLite's: one clock in every view.
        cursor.execute("SET TIME ZONE 'UTC'")
        if readonly:  # every transaction READ ONLY: the server refuses any write the dashboard might try
            cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        cursor.close()
        # A SET inside a transaction that is rolled back is undone (the pool rolls back on every return).
        dbapi_connection.commit()

    return on_connect


def make_engine(url: str, *, readonly: bool = False) -> Engine:
    """An engine for the URL; `readonly` makes SQLite and PostgreSQL refuse writes (other databases: not enforced)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend != "sqlite":
        engine = create_engine(url, pool_pre_ping=True)
        if backend == "postgresql":
            event.listen(engine, "connect", _postgres_session(readonly))
        return engine
    database = parsed.database or ""
    if readonly:
        # SQLite's URI form opens the file read-only; the dashboard can never write by mistake.
        engine = create_engine(f"sqlite:///file:{database}?mode=ro&uri=true")
    else:
        engine = create_engine(url)
    event.listen(engine, "connect", _sqlite_pragmas(readonly))
    return engine


def _sqlite_file(engine: Engine) -> Path | None:
    """The database file of a SQLite engine; None for an in-memory one or another database."""
    database = engine.url.database
    if engine.url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    return Path(database)


def has_schema(engine: Engine) -> bool:
    """Whether a farm has created its tables in this database (a server's new database has none)."""
    return inspect(engine).has_table("alembic_version")


def shown_url(url: str) -> str:
    """The URL as farm prints it: without its password."""
    return make_url(url).render_as_string(hide_password=True)


def _writable_folder(folder: Path) -> None:
    """Make the folder and write a file in it, or say in one line why not (errno's words: read-only file system).

    Writing is the only honest test: permission bits do not stop root, a read-only medium does.
    """
    existed = folder.is_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise StoreError(f"cannot {'write to' if existed else 'create'} the store in {folder}: {reason}") from None


@contextmanager
def _exclusive(lock_file: Path | None) -> Iterator[None]:
    """Hold an exclusive flock on lock_file (none when None): one process at a time creates or migrates the store."""
    if lock_file is None:
        yield
        return
    with lock_file.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # released when the file closes, or the process dies
        yield


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision, one farm process at a time.

    Without the lock, two sweeps started together on a new store both find no tables and both
    create them: the second dies on "table artifacts already exists".
    """
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", os.fspath(MIGRATIONS))
    database = _sqlite_file(engine)
    with _exclusive(database.with_name(database.name + ".lock") if database else None), engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Held until this transaction commits (PostgreSQL's DDL is transactional): whoever comes
            # second waits here, then finds the schema at head and has nothing to do.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def open_store(location: StoreLocation | None = None, *, readonly: bool = False) -> Store:
    """The store at location; writable opens create its folders and bring its schema to head first."""
    location = location or StoreLocation.resolve()
    engine = make_engine(location.url, readonly=readonly)
    if not readonly:
        _writable_folder(location.data_dir)  # the artifacts live here whatever the database
        database = _sqlite_file(engine)
        if database is not None and database.parent != location.data_dir:
            _writable_folder(database.parent)
        upgrade(engine)
    return Store(
        engine=engine,
        sessions=sessionmaker(engine, expire_on_commit=False),
        artifacts=ArtifactStore(location.data_dir / "artifacts"),
        location=location,
    )
