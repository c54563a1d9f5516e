"""Where results live: a database (SQLite in WAL mode by default, any SQLAlchemy URL) and an artifact folder.

The driver is the only writer; the dashboard opens the same database read-only. The schema
is created and upgraded by Alembic, never by `create_all`, so an old farm-data folder is
migrated in place when a newer farm opens it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from farm.store.artifacts import ArtifactStore

DEFAULT_DATA_DIR = "farm-data"
MIGRATIONS = Path(__file__).with_name("migrations")


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


def make_engine(url: str, *, readonly: bool = False) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    database = parsed.database or ""
    if readonly:
        # SQLite's URI form opens the file read-only; the dashboard can never write by mistake.
        engine = create_engine(f"sqlite:///file:{database}?mode=ro&uri=true")
    else:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url)
    event.listen(engine, "connect", _sqlite_pragmas(readonly))
    return engine


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", os.fspath(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def open_store(location: StoreLocation | None = None, *, readonly: bool = False) -> Store:
    location = location or StoreLocation.resolve()
    engine = make_engine(location.url, readonly=readonly)
    if not readonly:
        upgrade(engine)
    return Store(
        engine=engine,
        sessions=sessionmaker(engine, expire_on_commit=False),
        artifacts=ArtifactStore(location.data_dir / "artifacts"),
        location=location,
    )
