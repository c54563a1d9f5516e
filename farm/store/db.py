"""Where results live: a database (SQLite in WAL mode by default; PostgreSQL for a fleet; any
SQLAlchemy URL) and an artifact folder, which stays under the data dir whatever the database.

Drivers write (several may share one store: farm.store.leases); the dashboard opens the same database read-only. The schema
is created and upgraded by Alembic, never by `create_all`, so an old farm-data folder is
migrated in place when a newer farm opens it; creation and each upgrade are one transaction
(SQLite's DDL too), so a full disk or a kill leaves the schema as it was, never half made. Two farms opening one new store at once take
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

from sqlalchemy import Connection, Engine, MetaData, create_engine, event, func, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

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


STORE_ATTRIBUTE = "farm_store"  # set on every database error of farm's engines: a FailedAt


@dataclass(frozen=True)
class FailedAt:
    """Where a database error happened, for its one line: which database, and whether a connection was open
    (a COMMIT that fails on a full disk has no statement, like a failed connect, but it is a write)."""

    store: str
    connected: bool


def store_name(url: str) -> str:
    """The database as an error line names it: a SQLite file's path, any other URL without its password."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        return parsed.database
    return shown_url(url)


def _name_the_store(engine: Engine, url: str) -> None:
    """Every database error of this engine carries the database's name (SQLite's "database disk image is
    malformed" or "database or disk is full" say nothing of which file)."""
    name = store_name(url)

    def on_error(context: Any) -> None:
        if context.sqlalchemy_exception is not None:
            setattr(context.sqlalchemy_exception, STORE_ATTRIBUTE, FailedAt(name, context.connection is not None))

    event.listen(engine, "handle_error", on_error)


def make_engine(url: str, *, readonly: bool = False) -> Engine:
    """An engine for the URL; `readonly` makes SQLite and PostgreSQL refuse writes (other databases: not enforced)."""
    engine = _make_engine(url, readonly)
    _name_the_store(engine, url)
    return engine


def _make_engine(url: str, readonly: bool) -> Engine:
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


def _alembic_config() -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", os.fspath(MIGRATIONS))
    return config


def head_revision() -> str:
    """The newest migration's revision: what a store of this farm is at."""
    from alembic.script import ScriptDirectory

    return str(ScriptDirectory.from_config(_alembic_config()).get_current_head())


def schema_revision(connectable: Engine | Connection) -> str | None:
    """The revision the store's alembic_version names; None when it has no table or no row."""
    with _connected(connectable) as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


@contextmanager
def _connected(connectable: Engine | Connection) -> Iterator[Connection]:
    if isinstance(connectable, Connection):
        yield connectable
    else:
        with connectable.connect() as connection:
            yield connection


def _transactional_sqlite(engine: Engine) -> Engine:
    """An engine on the same SQLite file whose transactions hold DDL too.

    Python's sqlite3 module opens a transaction before INSERT/UPDATE/DELETE only: every CREATE TABLE of
    a migration committed on its own, so a full disk or a kill half way left a half-made schema
    with no alembic_version row. Here sqlite3 opens nothing itself and every transaction is an
    explicit BEGIN IMMEDIATE (the write lock at once), so creation and each upgrade commit whole or not at all.
    """
    migrating = create_engine(engine.url, poolclass=NullPool)

    def on_connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None
        _sqlite_pragmas(False)(dbapi_connection, record)

    event.listen(migrating, "connect", on_connect)
    event.listen(migrating, "begin", lambda connection: connection.exec_driver_sql("BEGIN IMMEDIATE"))
    _name_the_store(migrating, engine.url.render_as_string(hide_password=False))
    return migrating


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision in one transaction, one farm process at a time.

    Without the lock, two sweeps started together on a new store both find no tables and both
    create them: the second dies on "table artifacts already exists". A schema left half-made by an
    older farm (its creation interrupted) is mended first (`mend_half_made`).
    """
    from alembic import command

    config = _alembic_config()
    database = _sqlite_file(engine)
    migrating = _transactional_sqlite(engine) if engine.dialect.name == "sqlite" else engine
    try:
        with _exclusive(database.with_name(database.name + ".lock") if database else None), migrating.begin() as connection:
            if connection.dialect.name == "postgresql":
                # Held until this transaction commits (PostgreSQL's DDL is transactional): whoever comes
                # second waits here, then finds the schema at head and has nothing to do.
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            mend_half_made(connection, store_name(engine.url.render_as_string(hide_password=False)))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        if migrating is not engine:
            migrating.dispose()


def farm_tables(connectable: Engine | Connection) -> list[str]:
    """farm's tables that the database holds, whatever its alembic_version says."""
    with _connected(connectable) as connection:
        return sorted(_columns(connection))


def _columns(connection: Connection) -> dict[str, set[str]]:
    """farm's tables in the database and their columns (a shared PostgreSQL database may hold others' tables too)."""
    from farm.store.schema import Base

    found = inspect(connection)
    return {table: {c["name"] for c in found.get_columns(table)} for table in found.get_table_names() if table in Base.metadata.tables}


def _revision_schemas() -> list[tuple[str, dict[str, set[str]]]]:
    """Each revision's tables and columns, oldest first, as its migrations make them (in a memory database)."""
    from alembic import command
    from alembic.script import ScriptDirectory

    config = _alembic_config()
    revisions = [r.revision for r in reversed(list(ScriptDirectory.from_config(config).walk_revisions()))]
    memory = create_engine("sqlite://")
    schemas = []
    with memory.begin() as connection:
        config.attributes["connection"] = connection
        for revision in revisions:
            command.upgrade(config, revision)
            schemas.append((revision, _columns(connection)))
    memory.dispose()
    return schemas


def mend_half_made(connection: Connection, where: str) -> None:
    """A store with farm's tables but no alembic_version row: its creation by an older farm was cut off.

    Empty, it is dropped and created again. Holding rows, it is stamped with the revision whose
    schema it has exactly, and upgraded from there; matching none, it is refused in one line.
    """
    tables = _columns(connection)
    if not tables or schema_revision(connection) is not None:
        return
    reflected = MetaData()
    reflected.reflect(bind=connection, only=[*tables, *(["alembic_version"] if inspect(connection).has_table("alembic_version") else [])])
    rows = sum(connection.execute(select(func.count()).select_from(t)).scalar() or 0 for t in reflected.sorted_tables)
    if rows == 0:
        reflected.drop_all(connection)
        return
    for revision, expected in _revision_schemas():
        if expected == tables:
            if not inspect(connection).has_table("alembic_version"):
                connection.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)"))
            connection.execute(text("INSERT INTO alembic_version (version_num) VALUES (:v)"), {"v": revision})
            return
    raise StoreError(f"{where}: a half-made schema (no alembic_version row, tables of no farm version) that holds {rows} rows: "
                     "move the database aside (e.g. `mv farm.db farm.db.broken`) and run the sweep again to rebuild it")


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
