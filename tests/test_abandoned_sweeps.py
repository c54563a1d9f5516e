"""Stored state tells the truth (issue 22, must-have 7): a sweep whose driver is gone is stored as interrupted,
with its running jobs, by the next command that opens the store; no terminal codes reach stored text or pipes."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from farm.cli import app
from farm.store import Store, StoreLocation, open_store, schema
from farm.store.record import GONE, STALE_S, JobRow, Recorder, close_abandoned
from tests.conftest import CALIBRATION_DATA, REPO, write_spec

runner = CliRunner()
KEYS = ("a" * 32, "b" * 32, "c" * 32)


def _sweep(recorder: Recorder) -> int:
    """A sweep with one job done, one running on a node, one pending."""
    sweep_id = recorder.start_sweep("s", "s.yaml", {"name": "s"}, [("export", key, key[:1]) for key in KEYS])
    recorder.record(sweep_id, JobRow("export", KEYS[0], True, {"name": "m", "source": "x.onnx", "weights": None, "input_shape": [1]}))
    recorder.started(sweep_id, "export", KEYS[1], "host-1 0123abcd")
    return sweep_id


def _silent_since(store: Store, sweep_id: int, when: datetime) -> None:
    """The driver's last heartbeat was at `when` (what kill -9 leaves: a row nobody updates any more)."""
    with store.session() as s, s.begin():
        s.execute(update(schema.Sweep).where(schema.Sweep.id == sweep_id).values(heartbeat_at=when))


def _where(store: Store) -> list[str]:
    return ["--data-dir", str(store.location.data_dir), "--db-url", store.location.url]


def test_the_next_command_stores_a_gone_driver_as_interrupted(store: Store) -> None:
    """SQLite and PostgreSQL: `farm status` (a read command) stores the truth; a live sweep beside it is left alone."""
    recorder = Recorder(store)
    gone = _sweep(recorder)
    last = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=STALE_S * 10)
    _silent_since(store, gone, last)
    live = _sweep(recorder)

    result = runner.invoke(app, ["status", str(gone), "--json", *_where(store)])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["stored_status"] == "interrupted"
    assert shown["detail"] == f"interrupted (driver gone since {last:%H:%M:%S} UTC)"
    assert shown["stages"]["export"] == {"done": 1, "cached": 0, "rejected": 0, "skipped": 0, "failed": 0, "blocked": 0, "running": 0, "pending": 1,
                                              "interrupted": 1}
    with store.session() as s:
        jobs = {j.key: j for j in s.scalars(select(schema.SweepJob).where(schema.SweepJob.sweep_id == gone))}
        assert jobs[KEYS[1]].state == "interrupted" and jobs[KEYS[1]].error == GONE.format(seconds=STALE_S)
        assert jobs[KEYS[0]].state == "done" and jobs[KEYS[2]].state == "pending"  # what ended stays as it ended
        kept = s.get(schema.Sweep, live)
        assert kept is not None and kept.status == "running"
        assert s.scalar(select(schema.SweepJob.state).where(schema.SweepJob.sweep_id == live, schema.SweepJob.key == KEYS[1])) == "running"
    listed = runner.invoke(app, ["status", str(live), "--json", *_where(store)])
    assert json.loads(listed.stdout)["stored_status"] == "running"


def test_a_stalled_driver_takes_its_sweep_back_and_ctrl_c_reads_plainly(store: Store) -> None:
    """A driver that only stalled past STALE_S beats again: its sweep is running again. A sweep its driver ended
    itself (Ctrl-C) reads "interrupted", without "driver gone"."""
    from farm.results.progress import sweep_status

    recorder = Recorder(store)
    sweep_id = _sweep(recorder)
    _silent_since(store, sweep_id, datetime.now(UTC) - timedelta(seconds=STALE_S * 2))
    assert close_abandoned(store.engine) == [sweep_id]
    assert close_abandoned(store.engine) == []  # once
    recorder.heartbeat(sweep_id)
    with store.session() as s:
        again = s.get(schema.Sweep, sweep_id)
        assert again is not None and again.status == "running" and again.finished_at is None
    recorder.finish_sweep(sweep_id, "interrupted")
    with store.session() as s:
        ended = s.get(schema.Sweep, sweep_id)
        assert ended is not None
        assert sweep_status(ended.status, ended.heartbeat_at, ended.started_at, finished=ended.finished_at) == "interrupted"


@pytest.mark.slow
def test_no_terminal_codes_in_stored_errors_or_ray_lines(ray_cluster: None, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real task failure: Ray colours its text (the task name in a RayTaskError); the store keeps it plain.
    And Ray's own "(raylet) ..." lines carry no colour where farm's stderr is not a terminal."""
    import ray
    from ray._private import worker

    from farm.run import cluster

    @ray.remote
    def fails() -> None:
        raise RuntimeError("boom")

    with pytest.raises(ray.exceptions.RayTaskError) as raised:
        ray.get(fails.remote())
    text = str(raised.value)
    assert "\x1b[" in text  # what Ray gives: the test would catch codes that got through
    recorder = Recorder(store)
    sweep_id = recorder.start_sweep("s", "s.yaml", {"name": "s"}, [("export", KEYS[0], "a")])
    recorder.record(sweep_id, JobRow("export", KEYS[0], False, {"name": "m", "source": "x.onnx", "weights": None, "input_shape": [1]},
                                     error=text.splitlines()[0], log=text))
    with store.session() as s:
        row = s.get(schema.Model, KEYS[0])
        assert row is not None
        job = s.scalars(select(schema.SweepJob)).one()
        assert "\x1b" not in (row.error or "") + (row.log or "") + (job.error or "")
        assert "boom" in (row.log or "")

    monkeypatch.delenv("RAY_COLOR_PREFIX", raising=False)
    cluster.connect()  # stderr here is pytest's capture, not a terminal
    assert os.environ["RAY_COLOR_PREFIX"] == "0"
    printed = io.StringIO()
    line: dict[str, Any] = {"pid": "raylet", "ip": "h", "localhost": "h", "lines": ["A worker died or was killed"]}
    worker.print_worker_logs(line, printed)
    assert "A worker died" in printed.getvalue() and "\x1b" not in printed.getvalue()


def _ray_of(driver: int) -> list[psutil.Process]:
    """The Ray processes a killed driver started (their command lines name its session, which ends in its pid)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(f"_{driver}/" in arg or arg.endswith(f"_{driver}") for arg in process.info["cmdline"] or []):
            found.append(process)
    return found


@pytest.mark.slow
def test_a_driver_killed_mid_sweep_is_stored_as_interrupted(tmp_path: Path) -> None:
    """The issue's case for real: `farm sweep` killed with SIGKILL while a benchmark runs leaves its sweep
    "running" with a running job; once its heartbeat is older than STALE_S, the next `farm status` stores both
    as interrupted."""
    spec = write_spec(tmp_path, f"""
        name: killed
        models:
          - {{name: tiny, source: "tests.models:tiny_cnn", weights: null, input_shape: [3, 32, 32]}}
        backends: {{onnxruntime: {{intra_op_threads: 1}}}}
        batch_sizes: [1, 2]
        benchmark: {{warmup_s: 0, duration_s: 2, min_iterations: 3, window_s: 0.5, max_duration_s: 3}}
        fidelity: {{data: {CALIBRATION_DATA}, samples: 2}}
        selection: {{retime: {{enabled: false}}}}
        limits: {{isolate_builds: false}}
    """)
    data = tmp_path / "data"
    driver = subprocess.Popen([sys.executable, "-m", "farm.cli", "sweep", str(spec), "--data-dir", str(data)],
                              start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=os.environ | {"PYTHONPATH": str(REPO)})
    store: Store | None = None
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and driver.poll() is None:
            if (data / "farm.db").exists():
                store = store or open_store(StoreLocation.resolve(data), readonly=True)
                with contextlib.suppress(DBAPIError), store.session() as s:
                    if s.scalar(select(schema.SweepJob.id).where(schema.SweepJob.stage == "benchmark",
                                                                 schema.SweepJob.state == "running").limit(1)):
                        break
            time.sleep(0.3)
        assert driver.poll() is None, "the sweep ended before a benchmark ran: nothing to kill"
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        deadline = time.monotonic() + 30  # Ray's processes share the driver's fate, a few seconds later
        while _ray_of(driver.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        for left in _ray_of(driver.pid):
            left.kill()
    assert store is not None
    store.close()
    writable = open_store(StoreLocation.resolve(data))
    with writable.session() as s:
        [sweep] = s.scalars(select(schema.Sweep)).all()
        assert sweep.status == "running"  # what kill -9 leaves
        assert sweep.heartbeat_at is not None
        last = sweep.heartbeat_at - timedelta(seconds=STALE_S + 60)
    _silent_since(writable, sweep.id, last)  # a minute and more went by without a heartbeat
    writable.close()

    result = runner.invoke(app, ["status", "--json", "--data-dir", str(data)])
    shown = json.loads(result.stdout)
    assert shown["stored_status"] == "interrupted" and shown["detail"].startswith("interrupted (driver gone since ")
    assert shown["stages"]["benchmark"]["interrupted"] >= 1
    assert not any(states["running"] for states in shown["stages"].values())
