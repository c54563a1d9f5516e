"""A store is created whole or not at all (issue 22, must-have 3): a real full disk while the schema is made
leaves no half-made schema, and a half-made store an older farm left behind is mended or refused in one line."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from farm.cli import app
from farm.store import StoreLocation, open_store, schema
from farm.store.db import StoreError, _alembic_config, farm_tables, head_revision, schema_revision
from tests.conftest import REPO

runner = CliRunner()


def _older_store(database: Path | str, revision: str) -> None:
    """The tables of `revision`, made by its migrations, then its alembic_version row deleted: what an older
    farm left when its creation was cut off before the version was written. `database`: a SQLite file or a URL."""
    engine = create_engine(database if isinstance(database, str) else f"sqlite:///{database}")
    config = _alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        connection.execute(text("DELETE FROM alembic_version"))
    engine.dispose()


def _add_sweep(database: Path | str) -> None:
    engine = create_engine(database if isinstance(database, str) else f"sqlite:///{database}")
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO sweeps (name, spec_path, spec, status, started_at) "
                                "VALUES ('kept', 'x.yaml', '{}', 'finished', CURRENT_TIMESTAMP)"))
    engine.dispose()


def test_a_full_disk_while_the_store_is_created_leaves_nothing_half_made(tmp_path: Path) -> None:
    """A real 150 KiB tmpfs (in a mount namespace of its own): creating the store fails with one line naming the
    database; the file holds no table; once there is room the next command creates the whole schema."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("mounting a tmpfs needs root and unshare (CI runs as root)")
    medium = tmp_path / "medium"
    medium.mkdir()
    farm = f"{sys.executable} -m farm.cli"
    tables = f"{sys.executable} -c \"import sqlite3; print(sqlite3.connect('{medium}/d/farm.db').execute('select count(*) from sqlite_master').fetchone()[0], 'tables')\""
    script = (f"mount -t tmpfs -o size=150k tmpfs {medium} && {farm} verify --repair --data-dir {medium}/d; echo exit $?; {tables}; "
              f"mount -o remount,size=20m {medium} && {farm} verify --repair --data-dir {medium}/d; echo exit $?; "
              f"{farm} status --data-dir {medium}/d; echo exit $?")
    result = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                            env=os.environ | {"PYTHONPATH": str(REPO)})
    assert result.stderr.splitlines() == [
        f"error: cannot write to the store {medium}/d/farm.db: database or disk is full",
        "error: no sweep recorded yet",
    ], result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["exit 1", "0 tables"], lines  # rolled back whole: not one CREATE TABLE stayed
    assert lines[2].startswith("ok: 0 artifacts") and f"schema at {head_revision()}" in lines[2], lines
    assert lines[3:] == ["exit 0", "exit 2"], lines


def test_a_half_made_empty_store_is_made_again(tmp_path: Path) -> None:
    """Issue 22: the tables of an older version and no alembic_version row made every sweep fail with "table
    artifacts already exists". Read-only commands say which command mends it; a writing one mends it."""
    data = tmp_path / "data"
    data.mkdir()
    _older_store(data / "farm.db", "0004")
    status = runner.invoke(app, ["status", "--data-dir", str(data)])
    assert status.exit_code == 2
    assert status.stderr.splitlines() == [
        f"error: {data}/farm.db: the store's schema is half-made (no alembic_version row: its creation was cut off), "
        f"this farm's is {head_revision()}: `farm verify --repair` mends it"]
    verified = runner.invoke(app, ["verify", "--data-dir", str(data)])
    assert verified.exit_code == 1 and verified.stdout.startswith(f"schema: {data}/farm.db: at revision none, not ")
    repaired = runner.invoke(app, ["verify", "--repair", "--data-dir", str(data)])
    assert repaired.exit_code == 0 and repaired.stdout.startswith("ok: "), repaired.output
    store = open_store(StoreLocation.resolve(data))
    assert schema_revision(store.engine) == head_revision()
    assert set(farm_tables(store.engine)) == set(schema.Base.metadata.tables)
    store.close()
    assert runner.invoke(app, ["status", "--data-dir", str(data)]).stderr.strip() == "error: no sweep recorded yet"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_half_made_store_holding_rows_is_stamped_and_upgraded(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Rows are never dropped: a store whose tables are exactly an older revision's is stamped with it and
    upgraded from there, its rows kept."""
    data = tmp_path / "data"
    data.mkdir()
    database: Path | str = request.getfixturevalue("postgres_url") if backend == "postgresql" else data / "farm.db"
    _older_store(database, "0005")
    _add_sweep(database)
    store = open_store(StoreLocation.resolve(data, database if isinstance(database, str) else None))
    assert schema_revision(store.engine) == head_revision()
    with store.session() as s:
        [kept] = s.query(schema.Sweep).all()
        assert kept.name == "kept" and kept.heartbeat_at is None  # 0008's column, added by the upgrade
    store.close()


def test_a_half_made_store_of_no_known_version_is_refused_with_what_to_do(tmp_path: Path) -> None:
    """Rows in tables no revision has exactly: nothing is dropped or guessed; one line says how to start over."""
    data = tmp_path / "data"
    data.mkdir()
    _older_store(data / "farm.db", "0004")
    _add_sweep(data / "farm.db")
    engine = create_engine(f"sqlite:///{data / 'farm.db'}")
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE fidelity"))  # creation cut off before its last table
    engine.dispose()
    with pytest.raises(StoreError) as refused:
        open_store(StoreLocation.resolve(data))
    assert str(refused.value) == (
        f"{data}/farm.db: a half-made schema (no alembic_version row, tables of no farm version) that holds 1 rows: "
        "move the database aside (e.g. `mv farm.db farm.db.broken`) and run the sweep again to rebuild it")
    repaired = runner.invoke(app, ["verify", "--repair", "--data-dir", str(data)])
    assert repaired.exit_code == 2 and repaired.stderr.strip() == f"error: {refused.value}"
    assert "sweeps" in farm_tables(create_engine(f"sqlite:///{data / 'farm.db'}"))  # nothing was dropped


def test_a_full_disk_is_one_line_naming_the_file(tmp_path: Path) -> None:
    """A real full tmpfs: ENOSPC names no file of its own; farm's line names the report, and an artifact
    write names the artifact, where before they said only "No space left on device"."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("mounting a tmpfs needs root and unshare (CI runs as root)")
    from tests.seed import seed

    seeded = seed(tmp_path / "seeded")
    medium = tmp_path / "medium"
    medium.mkdir()
    put = (f"{sys.executable} -c \"from pathlib import Path; from farm.store import ArtifactStore; "
           f"ArtifactStore(Path('{medium}/artifacts')).put(bytes(3000))\" 2>&1 | tail -1")
    script = (f"mount -t tmpfs -o size=64k tmpfs {medium} && mkdir {medium}/artifacts && "
              f"(dd if=/dev/zero of={medium}/filler bs=4k 2>/dev/null; true) && "  # every block taken
              f"{sys.executable} -m farm.cli report 1 --out {medium}/report.html --data-dir {seeded.location.data_dir}; echo exit $?; {put}")
    result = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                            env=os.environ | {"PYTHONPATH": str(REPO)})
    assert result.stderr.splitlines() == [f"error: {medium}/report.html: cannot write (No space left on device)"], result.stderr
    sha = hashlib.sha256(bytes(3000)).hexdigest()
    assert result.stdout.splitlines() == ["exit 1", f"OSError: [Errno 28] No space left on device: '{medium}/artifacts/{sha[:2]}/{sha}'"]
