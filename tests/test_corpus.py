"""The bad-input corpus (tests/corpus/cases.yaml): every case ends with its one line and its exit code,
and nothing else is lost. tests/corpus/README.md describes a case."""

from __future__ import annotations

import copy
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from farm.cli import app
from farm.store import StoreLocation, open_store, schema
from tests.conftest import CALIBRATION_DATA, REPO
from tests.seed import Seeded, beat, seed

CASES: list[dict[str, Any]] = yaml.safe_load((Path(__file__).parent / "corpus" / "cases.yaml").read_text())
# What every case starts from: one tiny CNN on ONNX Runtime, timed for milliseconds, judged on 2 photos.
BASE_SPEC: dict[str, Any] = {
    "name": "corpus",
    "models": [{"name": "tiny", "source": "tests.models:tiny_cnn", "weights": None, "input_shape": [3, 32, 32]}],
    "backends": {"onnxruntime": {"intra_op_threads": 1}},
    "benchmark": {"warmup_s": 0, "duration_s": 0.05, "min_iterations": 3, "window_s": 0.05, "max_duration_s": 0.3},
    "selection": {"retime": {"enabled": False}},
    "fidelity": {"data": str(CALIBRATION_DATA), "samples": 2},
    "limits": {"isolate_builds": False},
}


# --- makers: files a case asks for --------------------------------------------------------------

def _images(path: Path, count: int, single: bool = False) -> None:
    photos = sorted(CALIBRATION_DATA.glob("*.jpg"))[:count]
    if single:
        path.write_bytes(photos[0].read_bytes())
        return
    path.mkdir(parents=True, exist_ok=True)
    for photo in photos:
        shutil.copy(photo, path / photo.name)


def _truncated_jpeg(path: Path) -> None:
    """A real photo cut at 60%: its header reads, its pixels do not."""
    data = sorted(CALIBRATION_DATA.glob("*.jpg"))[0].read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])


def _onnx_external(path: Path, location: str) -> None:
    """A valid graph whose one initializer keeps its data in another file, at `location`."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones(4, np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", location
    graph = helper.make_graph([helper.make_node("Add", ["input", "w"], ["output"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4])], [weight])
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())


def _npz(path: Path, arrays: int) -> None:
    named: dict[str, Any] = {f"a{i}": np.zeros((2, 3, 32, 32), np.float32) for i in range(arrays)}
    np.savez(path, **named)


def _stale_store(path: Path) -> None:
    """A store whose sweep was left "running" by a driver killed at 10:00 (kill -9: no finish, no heartbeat since)."""
    store = open_store(StoreLocation.resolve(path))
    then = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    with store.session() as s, s.begin():
        s.add(schema.Sweep(name="killed", spec_path="x.yaml", spec={}, status="running", started_at=then, heartbeat_at=then))
    store.close()


def _damaged_store(path: Path) -> None:
    """A real store with one sweep, whose sweeps table's page a bad disk overwrote: SQLite reads it as malformed."""
    store = open_store(StoreLocation.resolve(path))
    with store.session() as s, s.begin():
        s.add(schema.Sweep(name="kept", spec_path="x.yaml", spec={}, status="finished"))
    store.close()
    with sqlite3.connect(path / "farm.db") as connection:
        page = connection.execute("SELECT rootpage FROM sqlite_master WHERE name = 'sweeps'").fetchone()[0]
        size = connection.execute("PRAGMA page_size").fetchone()[0]
    connection.close()
    with (path / "farm.db").open("r+b") as handle:
        handle.seek((page - 1) * size)
        handle.write(b"\xff" * size)


def _half_made_store(path: Path, revision: str, drop: str | None = None, rows: bool = False) -> None:
    """The tables an older farm made before its creation was cut off: `revision`'s, less `drop`, and no
    alembic_version row; `rows` adds a sweep to them."""
    from alembic import command
    from sqlalchemy import create_engine, text

    from farm.store.db import _alembic_config

    path.mkdir(parents=True, exist_ok=True)
    engine = create_engine(f"sqlite:///{path / 'farm.db'}")
    config = _alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        connection.execute(text("DELETE FROM alembic_version"))
        if drop:
            connection.execute(text(f"DROP TABLE {drop}"))
        if rows:
            connection.execute(text("INSERT INTO sweeps (name, spec_path, spec, status, started_at) "
                                    "VALUES ('kept', 'x.yaml', '{}', 'finished', CURRENT_TIMESTAMP)"))
    engine.dispose()


def _damaged_artifacts(path: Path, damage: str, kind: str = "engine") -> None:
    """A seeded store (tests/seed.py) with what a disk, a hand or a killed writer leaves among its artifacts:
    `corrupt` (one byte of every `kind` artifact flipped), `missing` (every one deleted), `orphan` (a file no
    row names), `partial` (a write cut off)."""
    seeded = seed(path)
    root = path / "artifacts"
    with sqlite3.connect(path / "farm.db") as connection:
        shas = [sha for (sha,) in connection.execute("SELECT sha256 FROM artifacts WHERE kind = ?", (kind,))]
    connection.close()
    for sha in shas if damage in ("corrupt", "missing") else []:
        file = root / sha[:2] / sha
        if damage == "missing":
            file.unlink()
        else:
            data = bytearray(file.read_bytes())
            data[0] ^= 0xFF
            file.write_bytes(bytes(data))
    if damage == "orphan":
        (root / "ab" / ("ab" + "0" * 62)).parent.mkdir(exist_ok=True)
        (root / "ab" / ("ab" + "0" * 62)).write_bytes(b"bytes no row names")
    if damage == "partial":
        (root / "ab").mkdir(exist_ok=True)
        (root / "ab" / ".partial-cut").write_bytes(b"half an eng")
    beat(seeded.location)  # its running sweep reads as running however long seeding took


MAKERS: dict[str, Callable[..., None]] = {
    "bytes": lambda path, hex: path.write_bytes(bytes.fromhex(hex)),
    "repeat": lambda path, text, times: path.write_text(text * times),
    "dir": lambda path: path.mkdir(parents=True, exist_ok=True),
    "images": _images,
    "truncated_jpeg": _truncated_jpeg,
    "garbage": lambda path: path.write_bytes(b"this is not a protobuf \xff\x00" * 8),
    "onnx_external": _onnx_external,
    "npy": lambda path, shape: np.save(path, np.zeros(shape, np.float32)),
    "npz": _npz,
    "stale_store": _stale_store,
    "corrupt_db": lambda path: path.write_bytes(b"SQLite format? no: " + bytes(range(256)) * 8),
    "damaged_store": _damaged_store,
    "half_made_store": _half_made_store,
    "damaged_artifacts": _damaged_artifacts,
    "symlink": lambda path, to: path.symlink_to(to),
}


# --- the runner ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    return seed(tmp_path_factory.mktemp("corpus-seeded") / "farm-data")


@pytest.fixture(scope="module")
def ports() -> Iterator[dict[str, str]]:
    """A port nothing listens on, and a socket that accepts connections and never speaks Ray."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    free = closed.getsockname()[1]
    closed.close()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    yield {"closed_port": str(free), "listener": f"127.0.0.1:{listener.getsockname()[1]}"}
    listener.close()


def _merge(base: Any, change: Any) -> Any:
    if isinstance(base, dict) and isinstance(change, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in change.items()}}
    return change


def _value(value: Any, fill: Callable[[str], str]) -> Any:
    """A case's value with placeholders filled and `{make: long}` made."""
    if isinstance(value, dict) and value.get("make") == "long":
        return "x" * value["length"]
    if isinstance(value, dict):
        return {fill(str(k)): _value(v, fill) for k, v in value.items()}
    if isinstance(value, list):
        return [_value(v, fill) for v in value]
    return fill(value) if isinstance(value, str) else value


def _prepare(case: dict[str, Any], tmp: Path, fill: Callable[[str], str]) -> None:
    for name, content in (case.get("files") or {}).items():
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, dict):
            MAKERS[content["make"]](path, **{k: v for k, v in content.items() if k != "make"})
        else:
            path.write_text(fill(content))
    if "spec" in case or "model" in case:
        spec = _merge(copy.deepcopy(BASE_SPEC), _value(case.get("spec") or {}, fill))
        if "model" in case:
            spec["models"][0] = _merge(spec["models"][0], _value(case["model"], fill))
        spec = {k: v for k, v in spec.items() if v is not None}
        (tmp / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    elif not (tmp / "spec.yaml").exists():
        (tmp / "spec.yaml").write_text(yaml.safe_dump(BASE_SPEC, sort_keys=False))


def _run(case: dict[str, Any], argv: list[str], env: dict[str, str], tmp: Path) -> tuple[int, str, str]:
    if case.get("subprocess"):
        done = subprocess.run([sys.executable, "-m", "farm.cli", *argv], capture_output=True, text=True, timeout=120, cwd=tmp,
                              env=os.environ | {"PYTHONPATH": str(REPO)} | env)
        return done.returncode, done.stdout, done.stderr
    result = CliRunner().invoke(app, argv, env=env, prog_name="farm")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback is exactly what the corpus forbids
    return result.exit_code, result.stdout, result.stderr


def _check_sweep(case: dict[str, Any], data: Path) -> None:
    """Nothing else was lost: the store is sound, no temporary file is left, the healthy jobs finished."""
    database = data / "farm.db"
    with sqlite3.connect(database) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        states = connection.execute("SELECT label, state FROM sweep_jobs").fetchall()
    assert not list((data / "artifacts").glob("*/.partial-*")), "a temporary artifact file was left behind"
    for prefix in case.get("finished") or []:
        mine = [(label, state) for label, state in states if label.startswith(prefix)]
        assert mine and all(state in ("done", "cached") for _, state in mine), mine


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_case(case: dict[str, Any], tmp_path: Path, request: pytest.FixtureRequest, ports: dict[str, str],
              monkeypatch: pytest.MonkeyPatch) -> None:
    places = {"tmp": str(tmp_path), "spec": str(tmp_path / "spec.yaml"), "repo": str(REPO), "data": str(CALIBRATION_DATA), **ports}
    if "{seeded}" in str(case.get("argv")):
        places["seeded"] = str(request.getfixturevalue("seeded").location.data_dir)

    def fill(text: str) -> str:
        for name, value in places.items():
            text = text.replace("{" + name + "}", value)
        return text

    _prepare(case, tmp_path, fill)
    if case.get("ray"):
        request.getfixturevalue("ray_cluster")
    elif not case.get("subprocess"):  # the corpus promise: a bad input fails before Ray starts
        import farm.run.cluster

        def no_ray(address: str | None = None) -> None:
            raise AssertionError("Ray was started for an input that should have failed before it")

        monkeypatch.setattr(farm.run.cluster, "connect", no_ray)
    argv = _value(case.get("argv") or ["sweep", "{spec}", "--data-dir", "{tmp}/data"], fill)
    env = _value(case.get("env") or {}, fill)
    if "RAY_ADDRESS" not in env and not case.get("ray"):
        env["RAY_ADDRESS"] = ""  # an address in the developer's shell must not change what a case means
    code, stdout, stderr = _run(case, argv, env, tmp_path)

    lines = [line for line in (stdout if case.get("stream") == "stdout" else stderr).splitlines() if line.strip()]
    shown = f"exit {code}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    assert code == case["exit"], shown
    if "line" in case:
        wanted = fill(case["line"])
        assert (lines == [wanted]) if case.get("match", "only") == "only" else (wanted in lines), shown
    else:
        import re

        pattern = re.compile(fill(case["regex"]).replace(str(tmp_path), re.escape(str(tmp_path))))
        hits = [line for line in lines if pattern.fullmatch(line)]
        assert hits and (case.get("match", "only") != "only" or len(lines) == 1), shown
    if case.get("ray"):
        _check_sweep(case, tmp_path / "data")
    elif argv[0] == "sweep" and code == 2:
        assert not (tmp_path / "data" / "farm.db").exists(), "a sweep refused before any work must not create a store"


def test_the_corpus_is_large_and_names_each_case_once() -> None:
    ids = [c["id"] for c in CASES]
    assert len(ids) >= 60 and len(set(ids)) == len(ids)
    kinds = {"spec", "model", "data", "run", "store", "pull", "deliver", "usage", "ray"}
    assert kinds <= {i.split("-")[0] for i in ids} | {"spec", "model"}
