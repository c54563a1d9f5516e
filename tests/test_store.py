"""The store on real SQLite files and a real PostgreSQL server: migrations, WAL, artifacts, the
recorder's round trip, read-only opens, two farms creating one store, and stores that cannot be made."""

from __future__ import annotations

import errno
import hashlib
import multiprocessing
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import DBAPIError

from farm.results import progress, queries
from farm.run.jobs import content_key
from farm.run.stages import ExportJob
from farm.store import Store, StoreLocation, open_store, schema
from farm.store.db import StoreError
from farm.store.record import Blob, JobRow, Recorder
from tests.conftest import BACKENDS, location_on
from tests.mounts import tmpfs
from workers.structs import ExportInfo, ModelRef, TensorSpec


def test_migrations_match_the_orm(store: Store) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with store.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), schema.Base.metadata)
        assert diff == []
        if connection.dialect.name == "sqlite":
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
        else:  # the test server's own zone is New York's (tests/postgres.py)
            assert connection.execute(text("SHOW TimeZone")).scalar() == "UTC"
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == _head_revision()


def _head_revision() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from farm.store.db import MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return str(ScriptDirectory.from_config(config).get_current_head())


def _old_database(url: str, revision: str, sweep_row: str) -> None:
    """A database as farm at `revision` left it, with one sweep row (the VALUES of an INSERT) written then."""
    from alembic import command
    from alembic.config import Config

    from farm.store.db import MIGRATIONS, make_engine

    engine = make_engine(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        connection.execute(text(f"INSERT INTO sweeps (name, spec_path, spec, status, started_at) VALUES {sweep_row}"))
    engine.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_old_database_is_upgraded_in_place(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    location = location_on(backend, tmp_path, request)
    _old_database(location.url, "0001", "('old', 'old.yaml', '{}', 'finished', CURRENT_TIMESTAMP)")
    store = open_store(location)
    with store.engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == _head_revision()
        assert {"timing_caches", "calibrations", "retimes"} <= set(inspect(connection).get_table_names())
        assert "heartbeat_at" in {c["name"] for c in inspect(connection).get_columns("sweeps")}  # 0008
        assert {"node", "started_at"} <= {c["name"] for c in inspect(connection).get_columns("sweep_jobs")}  # 0007
    with store.session() as s, s.begin():  # the old row is kept, and a name longer than 0001's VARCHAR(128) fits now
        s.add(schema.Sweep(name="n" * 300, spec_path="x.yaml", spec={}, status="running"))
    with store.session() as s:
        assert [len(name) for name in s.scalars(select(schema.Sweep.name).order_by(schema.Sweep.id))] == [3, 300]
    store.close()


def test_0008_keeps_sweeps_written_before_heartbeats(tmp_path: Path) -> None:
    """A sweep row from before 0008 survives the upgrade with no heartbeat; readers fall back to its start."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    _old_database(url, "0007", "('old', 'x.yaml', '{}', 'running', '2026-01-01 10:00:00')")
    store = open_store(StoreLocation(tmp_path, url))
    with store.session() as s:
        [summary] = queries.sweeps(s)
        assert s.scalars(select(schema.Sweep.heartbeat_at)).one() is None
    assert summary.status == "interrupted (driver gone since 10:00:00 UTC)"


def test_reopening_an_existing_store_keeps_rows(tmp_path: Path) -> None:
    location = StoreLocation.resolve(tmp_path / "d")
    first = open_store(location)
    with first.session() as s, s.begin():
        s.add(schema.Sweep(name="a", spec_path="x.yaml", spec={}, status="finished"))
    first.close()
    again = open_store(location)
    with again.session() as s:
        assert s.scalars(select(schema.Sweep.name)).all() == ["a"]


def test_location_defaults_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FARM_DATA_DIR", raising=False)
    monkeypatch.delenv("FARM_DB_URL", raising=False)
    assert StoreLocation.resolve().url == f"sqlite:///{tmp_path / 'farm-data' / 'farm.db'}"
    monkeypatch.setenv("FARM_DATA_DIR", str(tmp_path / "elsewhere"))
    assert StoreLocation.resolve().data_dir == tmp_path / "elsewhere"
    monkeypatch.setenv("FARM_DB_URL", "postgresql://db/farm")
    assert StoreLocation.resolve().url == "postgresql://db/farm"


def test_artifacts_are_content_addressed(store: Store) -> None:
    sha = store.artifacts.put(b"engine bytes")
    assert sha == hashlib.sha256(b"engine bytes").hexdigest()
    assert store.artifacts.path(sha).relative_to(store.artifacts.root).as_posix() == f"{sha[:2]}/{sha}"
    assert store.artifacts.put(b"engine bytes") == sha
    assert store.artifacts.get(sha) == b"engine bytes"
    assert store.artifacts.verify(sha)
    store.artifacts.path(sha).write_bytes(b"tampered")
    assert not store.artifacts.verify(sha)


def _export_job() -> ExportJob:
    model = ModelRef("m", "torchvision:resnet18", None, (3, 224, 224))
    return ExportJob(content_key("export", model=model), "m", model)


EXPORT_COLUMNS = {"name": "m", "source": "torchvision:resnet18", "weights": None, "input_shape": [3, 224, 224]}


def test_recorder_round_trip(store: Store) -> None:
    """The store knows rows: a stage, a key, columns and artifacts; never a job."""
    recorder = Recorder(store)
    key = "k" * 32
    sweep_id = recorder.start_sweep("s", "s.yaml", {"name": "s"}, [("export", key, "m")])
    assert recorder.finished("export", key) is None

    recorder.record(sweep_id, JobRow("export", key, False, EXPORT_COLUMNS, error="ValueError: boom", log="Traceback ..."))
    assert recorder.finished("export", key) is None  # a failure is not a cached result

    blobs = recorder.put_blobs({"onnx": b"onnx", "checkpoint": b"ckpt"}, {"onnx": "onnx", "checkpoint": "checkpoint"})
    assert blobs["onnx"] == Blob(hashlib.sha256(b"onnx").hexdigest(), "onnx", 4)
    columns = EXPORT_COLUMNS | {"onnx_sha256": blobs["onnx"].sha256, "checkpoint_sha256": blobs["checkpoint"].sha256}
    recorder.record(sweep_id, JobRow("export", key, True, columns, seconds=1.5, node="n1"), blobs.values())
    recorder.finish_sweep(sweep_id, "finished")

    row = recorder.finished("export", key)
    assert row is not None and row.status == "ok" and row.error is None and row.node == "n1"
    with store.session() as s:
        assert {a.kind for a in s.scalars(select(schema.Artifact))} == {"onnx", "checkpoint"}
        sweep_job = s.scalars(select(schema.SweepJob)).one()
        assert (sweep_job.state, sweep_job.stage) == ("done", "export")
        assert s.get(schema.Sweep, sweep_id).status == "finished"


def test_a_stage_turns_a_job_into_a_row_and_back(store: Store) -> None:
    from farm.run.stages import Produced, registry
    from farm.run.tasks import Outcome

    stage, job, recorder = registry()["export"], _export_job(), Recorder(store)
    sweep_id = recorder.start_sweep("s", "s.yaml", {"name": "s"}, [(job.stage, job.key, job.label)])
    info = ExportInfo(17, (TensorSpec("input", ("batch", 3, 224, 224), "float32"),), (TensorSpec("output", ("batch", 1000), "float32"),), 60, 1.5, "2.x")
    outcome = Outcome(True, info, {"onnx": b"onnx", "checkpoint": b"ckpt"}, seconds=1.5, node="n1")
    blobs = recorder.put_blobs(outcome.blobs, stage.kinds())
    written = recorder.record(sweep_id, stage.row(job, outcome, blobs), blobs.values())
    expected = Produced({"onnx": hashlib.sha256(b"onnx").hexdigest(), "checkpoint": hashlib.sha256(b"ckpt").hexdigest()})
    assert stage.produced(written) == expected
    stored = recorder.finished("export", job.key)
    assert stored is not None and stage.produced(stored) == expected  # what resume hands the children
    assert stored.inputs == [{"name": "input", "shape": ["batch", 3, 224, 224], "dtype": "float32"}] and stored.node_count == 60


def test_names_paths_and_labels_of_any_length(store: Store) -> None:
    """PostgreSQL enforces VARCHAR lengths: free text is TEXT there (migration 0006), labels are cut to 256."""
    recorder = Recorder(store)
    key = "k" * 32
    sweep_id = recorder.start_sweep("s" * 300, "/deep" * 200 + "/spec.yaml", {}, [("export", key, "label " * 100)])
    columns = {"name": "m" * 200, "source": "/models" * 100 + "/m.onnx", "weights": "W" * 100, "input_shape": [3, 8, 8]}
    recorder.record(sweep_id, JobRow("export", key, True, columns))
    with store.session() as s:
        model = s.get(schema.Model, key)
        assert model is not None and (len(model.name), len(model.weights or "")) == (200, 100) and model.source.endswith("/m.onnx")
        assert len(s.scalars(select(schema.SweepJob.label)).one()) == 256
        sweep = s.get(schema.Sweep, sweep_id)
        assert sweep is not None and (len(sweep.name), len(sweep.spec_path)) == (300, 1010)


def test_readonly_store_cannot_write(store: Store) -> None:
    reader = open_store(store.location, readonly=True)
    with reader.session() as s:
        assert s.scalars(select(schema.Sweep)).all() == []
    with reader.session() as s:  # the same connection, back from the pool (rolled back there): still read-only
        s.add(schema.Sweep(name="x", spec_path="x", spec={}, status="running"))
        # SQLite opens the file read-only; PostgreSQL runs every transaction READ ONLY
        with pytest.raises(DBAPIError, match="readonly database|read-only transaction"):
            s.commit()
    reader.close()


def _open_together(location: StoreLocation, start: Any) -> None:
    import alembic.command  # noqa: F401 - imported lazily by open_store: here, so that no farm gets a head start
    import alembic.config  # noqa: F401

    start.wait(60)
    open_store(location).close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_farms_create_one_new_store_at_once(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Two sweeps started together on a new store: both create-and-migrate, one after the other (it raced:
    "table artifacts already exists" on SQLite, a duplicate alembic_version type on PostgreSQL)."""
    location = location_on(backend, tmp_path / "farm-data", request)
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(3)  # passed once every farm has imported everything: they open at the same moment
    farms = [context.Process(target=_open_together, args=(location, start)) for _ in range(3)]
    for farm in farms:
        farm.start()
    for farm in farms:
        farm.join(120)
    assert [farm.exitcode for farm in farms] == [0, 0, 0]
    store = open_store(location, readonly=True)
    with store.engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == _head_revision()
    store.close()


def test_a_store_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    """A data dir below a file (NotADirectoryError): the same path as a read-only medium (tests/test_cli.py
    mounts one), with errno's words."""
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError) as raised:
        open_store(StoreLocation.resolve(tmp_path / "file" / "farm-data"))
    assert str(raised.value) == f"cannot create the store in {tmp_path / 'file' / 'farm-data'}: not a directory"


def test_heartbeats_are_throttled_and_a_silent_driver_reads_as_interrupted(store: Store) -> None:
    from datetime import UTC, datetime, timedelta

    from farm.store import record

    clock = iter([100.0, 101.0, 100.0 + record.HEARTBEAT_S + 0.1])  # the recorder's clock: 1 s, then a beat's worth later
    recorder = Recorder(store, clock=lambda: next(clock))
    sweep_id = recorder.start_sweep("s", "s.yaml", {"name": "s"}, [("export", "k" * 32, "m")])

    def stored_beat() -> datetime | None:
        with store.session() as s:
            return s.scalar(select(schema.Sweep.heartbeat_at).where(schema.Sweep.id == sweep_id))

    beats = []
    for _ in range(3):
        recorder.heartbeat(sweep_id)
        beats.append(stored_beat())
    assert beats[0] is not None and beats[1] == beats[0]  # the second call, 1 s after the first, wrote nothing
    assert beats[2] is not None and beats[2] > beats[0]
    with store.session() as s:
        sweep = s.get(schema.Sweep, sweep_id)
        beat = sweep.heartbeat_at
        assert beat is not None
        assert progress.sweep_status(sweep.status, beat, sweep.started_at) == "running"
        later = beat.replace(tzinfo=UTC) + timedelta(seconds=progress.STALE_S + 1)
        assert progress.sweep_status(sweep.status, beat, sweep.started_at, later) == f"interrupted (driver gone since {beat:%H:%M:%S} UTC)"
        assert progress.sweep_status("finished", beat, sweep.started_at, later) == "finished"  # a finished sweep needs no pulse
    assert datetime.now(UTC).replace(tzinfo=None) - beat.replace(tzinfo=None) < timedelta(seconds=30)


def test_a_sweep_without_one_ok_job_is_stored_as_failed(store: Store) -> None:
    recorder = Recorder(store)
    failed = recorder.start_sweep("s", "s.yaml", {"name": "s"}, [("export", "a" * 32, "a"), ("reference", "b" * 32, "b")])
    recorder.record(failed, JobRow("export", "a" * 32, False, EXPORT_COLUMNS, error="boom"))
    recorder.mark(failed, "reference", "b" * 32, "blocked")
    assert recorder.finish_sweep(failed, "finished") == "failed"
    partly = recorder.start_sweep("s", "s.yaml", {"name": "s"}, [("export", "c" * 32, "c")])
    recorder.mark(partly, "export", "c" * 32, "cached")
    assert recorder.finish_sweep(partly, "finished") == "finished"
    assert recorder.finish_sweep(partly, "interrupted") == "interrupted"
    with store.session() as s:
        assert [(x.status) for x in queries.sweeps(s)] == ["interrupted", "failed"]


def test_a_failed_artifact_write_leaves_no_temporary_file(store: Store) -> None:
    """A full disk mid-write (issue 13, item 14), for real: the artifacts on a 128 KiB tmpfs, an engine of 256 KiB.
    The error goes up, the partial file does not stay."""
    with tmpfs(store.artifacts.root, size="128k"):
        with pytest.raises(OSError, match="No space left") as raised:
            store.artifacts.put(b"an engine" * (256 * 1024 // 9))
        assert raised.value.errno == errno.ENOSPC
        assert list(store.artifacts.root.rglob(".partial-*")) == [] and store.artifacts.partials() == []
        assert not [p for p in store.artifacts.root.rglob("*") if p.is_file()]
        store.artifacts.put(b"a small engine")  # the disk is usable again: what failed took no space with it
