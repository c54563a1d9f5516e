"""Job leases (issue 22, must-have 4): two drivers over one store never run the same job twice.

The claim itself against real SQLite files and a real PostgreSQL server (atomic under threads racing for
the same jobs, takeover of a dead owner's lease, never of a live one), the driver's waiting on a job another
driver holds (a real local Ray), and two real `farm sweep` processes started at once over one store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner
from sqlalchemy import select, update

from farm.cli import app
from farm.run.driver import run_sweep
from farm.run.spec import load_spec
from farm.store import Store, StoreLocation, open_store, schema
from farm.store.leases import LEASE_S, DriverId, Holder
from farm.store.record import JobRow, Recorder
from tests.conftest import BACKENDS, CALIBRATION_DATA, REPO, location_on, write_spec

STAGE = "export"
KEY = "e" * 32
EXPORT_COLUMNS = {"name": "m", "source": "x.onnx", "weights": None, "input_shape": [1]}


def _sweep(recorder: Recorder, keys: tuple[str, ...] = (KEY,)) -> int:
    return recorder.start_sweep("leased", "leased.yaml", {"name": "leased"}, [(STAGE, key, key[:4]) for key in keys])


def _lease(store: Store, key: str = KEY) -> schema.JobLease | None:
    with store.session() as s:
        return s.get(schema.JobLease, (STAGE, key))


def _hand_written_lease(store: Store, owner: DriverId, heartbeat_at: datetime, key: str = KEY) -> None:
    """A lease as a driver elsewhere left it: its last renewal at `heartbeat_at`."""
    with store.session() as s, s.begin():
        s.add(schema.JobLease(stage=STAGE, key=key, owner=str(owner), sweep_id=None, heartbeat_at=heartbeat_at,
                              expires_at=heartbeat_at + timedelta(seconds=LEASE_S)))


def _utc(when: datetime) -> datetime:
    """A stored time as UTC: SQLite gives it back naive, PostgreSQL in UTC (the session's time zone)."""
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _elsewhere() -> DriverId:
    """A driver on another machine: its process cannot be looked at from here, only its heartbeat."""
    return DriverId("another-host:boot:ns", 1, "elsewhere")


def _dead_here() -> DriverId:
    """A driver of this machine whose process has exited (killed): its pid names no process any more."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    mine = DriverId.mine()
    return DriverId(mine.machine, int(child.stdout), "killed")


def test_a_live_lease_is_not_taken_over_and_a_dead_ones_is(store: Store) -> None:
    """SQLite and PostgreSQL. A lease renewed within LEASE_S by a driver elsewhere holds; one whose heartbeat stopped
    LEASE_S ago is taken over; so is one of a process of this machine that is gone, at once."""
    recorder = Recorder(store)
    sweep_id = _sweep(recorder, (KEY, "f" * 32))
    since = datetime.now(UTC)
    now = datetime.now(UTC)

    _hand_written_lease(store, _elsewhere(), now - timedelta(seconds=5))
    held = recorder.claim(sweep_id, STAGE, KEY, "node-a", since)
    assert not held.ours and held.answer is None
    assert held.holder == Holder(str(_elsewhere()), None, False)
    assert (lease := _lease(store)) is not None and lease.owner == str(_elsewhere())

    with store.session() as s, s.begin():  # its heartbeat stopped just over LEASE_S ago
        s.execute(update(schema.JobLease).values(heartbeat_at=now - timedelta(seconds=LEASE_S + 1),
                                                 expires_at=now - timedelta(seconds=1)))
    taken = recorder.claim(sweep_id, STAGE, KEY, "node-a", since)
    assert taken.ours
    assert (lease := _lease(store)) is not None and lease.owner == recorder.owner and lease.sweep_id == sweep_id
    with store.session() as s:
        job = s.scalars(select(schema.SweepJob).where(schema.SweepJob.key == KEY)).one()
        assert (job.state, job.node) == ("running", "node-a")  # marked running in the claim's own transaction

    killed = "f" * 32
    _hand_written_lease(store, _dead_here(), datetime.now(UTC), killed)  # renewed a moment ago, but its process is gone
    assert recorder.claim(sweep_id, STAGE, killed, "node-a", since).ours
    assert (lease := _lease(store, killed)) is not None and lease.owner == recorder.owner


def test_the_owner_keeps_its_leases_alive_and_lets_go_with_the_row(store: Store) -> None:
    """One heartbeat renews every lease of its driver; the row and the lease's release are one write, and a
    driver that waited finds the row (then a claim finds it too, failed or not: the owner's answer)."""
    owner, other = Recorder(store), Recorder(store)
    keys = tuple(c * 32 for c in "abc")
    mine, theirs = _sweep(owner, keys), _sweep(other, keys)
    since = datetime.now(UTC)
    assert all(owner.claim(mine, STAGE, key, "n", since).ours for key in keys)
    assert all(other.claim(theirs, STAGE, key, "n", since).holder is not None for key in keys)

    past = datetime.now(UTC) - timedelta(seconds=LEASE_S + 5)
    with store.session() as s, s.begin():  # as if the owner had stalled: every lease expired...
        s.execute(update(schema.JobLease).values(heartbeat_at=past, expires_at=past + timedelta(seconds=LEASE_S)))
    owner.heartbeat(mine)  # ...until its next heartbeat, one statement for all of them
    with store.session() as s:
        leased = s.scalars(select(schema.JobLease)).all()
        assert len(leased) == 3 and all(lease.owner == owner.owner and _utc(lease.heartbeat_at) > past for lease in leased)
    waited = other.look_again([(STAGE, key) for key in keys], since)
    assert all(claim.holder is not None and claim.holder.owner == owner.owner for claim in waited.values())

    owner.record(mine, JobRow(STAGE, keys[0], True, EXPORT_COLUMNS))
    owner.record(mine, JobRow(STAGE, keys[1], False, EXPORT_COLUMNS, error="boom on the owner's node"))
    assert _lease(store, keys[0]) is None and _lease(store, keys[1]) is None and _lease(store, keys[2]) is not None
    waited = other.look_again([(STAGE, key) for key in keys], since)
    done, failed = waited[keys[0]].answer, waited[keys[1]].answer
    assert done is not None and done.status == "ok"
    assert failed is not None and failed.error == "boom on the owner's node"
    assert waited[keys[2]].holder is not None
    answered = other.claim(theirs, STAGE, keys[1], "n", since)  # the owner's failure is the answer: not run again
    assert answered.answer is not None and answered.answer.status == "failed" and _lease(store, keys[1]) is None

    owner.finish_sweep(mine, "interrupted")  # Ctrl-C: what it still held is free at once
    assert _lease(store, keys[2]) is None
    assert other.look_again([(STAGE, keys[2])], since)[keys[2]] == type(answered)()  # neither held nor answered: claim it
    assert other.claim(theirs, STAGE, keys[2], "n", since).ours
    # a failure recorded before this sweep began is an earlier sweep's, tried again as without leases
    later = datetime.now(UTC) + timedelta(seconds=1)
    other.record(theirs, JobRow(STAGE, keys[2], False, EXPORT_COLUMNS, error="old failure"))
    assert Recorder(store).claim(theirs, STAGE, keys[2], "n", later).ours


def test_status_names_the_jobs_a_sweep_waits_on_and_who_runs_them(store: Store) -> None:
    """A job another driver holds is pending here, but not for a node: `farm status` says which sweep runs it."""
    keys = (KEY, "f" * 32)
    other, mine = Recorder(store), Recorder(store)
    theirs = _sweep(other, keys)
    waiting = _sweep(mine, keys)
    since = datetime.now(UTC)
    assert other.claim(theirs, STAGE, KEY, "n", since).ours
    assert mine.claim(waiting, STAGE, KEY, "n", since).holder is not None
    assert mine.claim(waiting, STAGE, keys[1], "n", since).ours  # its own claim: not waiting on anybody
    where = ["--data-dir", str(store.location.data_dir), "--db-url", store.location.url]

    shown = CliRunner().invoke(app, ["status", str(waiting), "--json", *where])
    assert shown.exit_code == 0, shown.output
    [held] = json.loads(shown.stdout)["waiting"]
    assert (held["stage"], held["label"], held["held_by_sweep"]) == (STAGE, KEY[:4], theirs)
    text = CliRunner().invoke(app, ["status", str(waiting), *where], env={"COLUMNS": "200"}).stdout
    assert f"waiting {STAGE} {KEY[:4]}: sweep {theirs} runs it" in text
    [back] = json.loads(CliRunner().invoke(app, ["status", str(theirs), "--json", *where]).stdout)["waiting"]
    assert (back["label"], back["held_by_sweep"]) == (keys[1][:4], waiting)  # and the other way round

    other.record(theirs, JobRow(STAGE, KEY, True, EXPORT_COLUMNS, node="n"))  # answered: the lease goes with the row
    assert json.loads(CliRunner().invoke(app, ["status", str(waiting), "--json", *where]).stdout)["waiting"] == []


def test_drivers_racing_for_the_same_jobs_each_get_a_job_once(store: Store) -> None:
    """SQLite and PostgreSQL: eight drivers (each its own engine and connections) claim the same 40 jobs at
    once, every one of them in a different order; every job is won by exactly one driver."""
    keys = [f"{i:032x}" for i in range(40)]
    recorders = [Recorder(open_store(store.location)) for _ in range(8)]
    sweeps = [_sweep(recorder, tuple(keys)) for recorder in recorders]
    since = datetime.now(UTC)
    won: list[tuple[int, str]] = []
    gate = threading.Barrier(len(recorders))

    def claim_all(i: int) -> None:
        gate.wait()
        for key in keys[i:] + keys[:i]:
            if recorders[i].claim(sweeps[i], STAGE, key, f"n{i}", since).ours:
                won.append((i, key))

    threads = [threading.Thread(target=claim_all, args=(i,)) for i in range(len(recorders))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for recorder in recorders:
        recorder.store.close()
    assert Counter(key for _, key in won) == Counter(keys)  # each key once, none lost
    with store.session() as s:
        owners = {lease.key: lease.owner for lease in s.scalars(select(schema.JobLease))}
    assert owners == {key: recorders[i].owner for i, key in won}


# --- the driver: a job another driver holds is awaited, not run ---------------------------------------------

SPEC = """
name: {name}
models:
  - {{name: tiny, source: "tests.models:tiny_cnn", weights: null, input_shape: [3, 32, 32]}}
backends: {{onnxruntime: {{intra_op_threads: 1, graph_optimization_level: [basic, all]}}}}
batch_sizes: [1, 2]
benchmark: {{warmup_s: 0, duration_s: 0.3, min_iterations: 3, window_s: 0.1, max_duration_s: 1}}
fidelity: {{data: {data}, samples: 2}}
limits: {{isolate_builds: false}}
"""


def _spec(folder: Path, name: str) -> Path:
    return write_spec(folder, SPEC.format(name=name, data=CALIBRATION_DATA), f"{name}.yaml")


def _export_key(spec_path: Path) -> str:
    from farm.run import cluster
    from farm.run.plan import expand

    spec, base = load_spec(spec_path)
    [export] = expand(spec, base, cluster.local_targets(spec.rtx_targets())).by_stage("export")
    return export.key


def _once_the_sweep_waits(store: Store, held_by: int, then: Callable[[], object]) -> threading.Thread:
    """Run `then` in a thread a while after another sweep than `held_by` has started: by then its driver has
    claimed its first job, found it leased, and waits (the claim is its first write after the sweep row)."""
    def act() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            with store.session() as s:
                if s.scalar(select(schema.Sweep.id).where(schema.Sweep.id != held_by)) is not None:
                    break
            time.sleep(0.2)
        time.sleep(3)
        then()

    thread = threading.Thread(target=act, daemon=True)
    thread.start()
    return thread


def _states(store: Store, sweep_id: int) -> dict[tuple[str, str], tuple[str, str | None]]:
    with store.session() as s:
        return {(j.stage, j.key): (j.state, j.error) for j in s.scalars(select(schema.SweepJob).where(schema.SweepJob.sweep_id == sweep_id))}


def _held_elsewhere(tmp_path: Path, name: str) -> tuple[Store, Path, str, Recorder, int]:
    """A store whose export job another driver (its own sweep) holds the lease of before this spec's sweep starts."""
    store = open_store(StoreLocation.resolve(tmp_path / "data"))
    path = _spec(tmp_path, name)
    key = _export_key(path)
    other = Recorder(store)
    other_sweep = _sweep(other, (key,))
    assert other.claim(other_sweep, STAGE, key, "elsewhere", datetime.now(UTC)).ours
    return store, path, key, other, other_sweep


def test_a_failure_of_the_driver_that_held_the_job_is_its_answer(ray_cluster: None, tmp_path: Path) -> None:
    """Another driver holds the export: this sweep waits instead of exporting; the other's failure ends it here
    as that driver's failure (not run again), and everything below it is blocked."""
    store, path, key, other, other_sweep = _held_elsewhere(tmp_path, "held")
    thread = _once_the_sweep_waits(store, other_sweep, lambda: other.record(
        other_sweep, JobRow(STAGE, key, False, EXPORT_COLUMNS, error="export failed on the other driver's node", node="elsewhere")))

    spec, base = load_spec(path)
    result = run_sweep(spec, base, str(path), store)
    thread.join()
    assert result.states[key] == "failed"
    assert result.errors[key] == "failed in another driver's sweep: export failed on the other driver's node"
    # the rest is blocked; a re-timing runs whatever its parents became, and finds nothing to time
    assert {result.states[j.key] for j in result.plan.jobs if j.key != key and j.stage != "retime"} == {"blocked"}
    assert _states(store, result.sweep_id)[(STAGE, key)] == ("failed", result.errors[key])
    with store.session() as s:
        row = s.get(schema.Model, key)
        assert row is not None and row.node == "elsewhere"  # the other driver's row, never overwritten by a run here
    assert _lease(store, key) is None


def test_a_job_its_driver_let_go_of_is_claimed_and_run(ray_cluster: None, tmp_path: Path) -> None:
    """The driver holding the export is interrupted (Ctrl-C: its leases are released, no row): the waiting sweep
    claims the export and runs the whole plan itself; no lease is left behind."""
    store, path, key, other, other_sweep = _held_elsewhere(tmp_path, "released")
    thread = _once_the_sweep_waits(store, other_sweep, lambda: other.finish_sweep(other_sweep, "interrupted"))

    spec, base = load_spec(path)
    result = run_sweep(spec, base, str(path), store)
    thread.join()
    assert set(result.states.values()) == {"done"}
    with store.session() as s:
        assert s.scalars(select(schema.JobLease)).all() == []
        row = s.get(schema.Model, key)
        assert row is not None and row.status == "ok" and row.node != "elsewhere"


# --- two real drivers: `farm sweep` twice at once over one store ---------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_two_drivers_started_at_once_run_every_job_once(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Two `farm sweep` processes of one spec, each with its own local Ray, over one store: both exit 0 and report
    every job; across both, every job was run (ended "done") by exactly one driver, and the stored row is that
    driver's; the store verifies clean (no artifact that no row names: nothing was made twice)."""
    location = location_on(backend, tmp_path / "data", request)
    open_store(location).close()  # the schema exists before both start, as on a fleet's server
    path = _spec(tmp_path, "twice")
    where = ["--data-dir", str(location.data_dir), "--db-url", location.url]
    command = [sys.executable, "-m", "farm.cli", "sweep", str(path), *where]
    env = os.environ | {"PYTHONPATH": str(REPO), "COLUMNS": "200"}
    env.pop("RAY_ADDRESS", None)
    drivers = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    try:
        outputs = [driver.communicate(timeout=540)[0] for driver in drivers]
    finally:
        for driver in drivers:
            if driver.poll() is None:
                driver.kill()
    for driver, output in zip(drivers, outputs, strict=True):
        assert driver.returncode == 0, output[-3000:]

    store = open_store(location, readonly=True)
    with store.session() as s:
        jobs = s.scalars(select(schema.SweepJob)).all()
        rows = {(stage, row.key): row for stage, table in schema.STAGE_TABLES.items() for row in s.scalars(select(table))}
        leased = s.scalars(select(schema.JobLease)).all()
    store.close()
    planned = {(j.stage, j.key) for j in jobs}
    ran = Counter((j.stage, j.key) for j in jobs if j.state == "done")
    assert ran == Counter(planned), "a job run by both drivers, or by neither"
    assert {j.state for j in jobs} <= {"done", "cached"}
    assert set(rows) == planned and all(row.status == "ok" for row in rows.values())
    runner_of = {(j.stage, j.key): j.node for j in jobs if j.state == "done"}  # "host 1a2b3c4d": that driver's Ray node
    for job, row in rows.items():  # (an fp32 variant is its export: recorded by the driver, no task, no device)
        assert row.device is None or (runner_of[job] or "").endswith(row.device["ray_node"][:8]), f"{job}: the row of another run"
    assert leased == []
    for output in outputs:  # each driver reports the whole sweep: every job, and the winners of the same groups
        assert f"{len(planned)} jobs, 0 failed (every job ok)" in output, output[-3000:]
        assert "Winners of sweep" in output and "tiny" in output
    checked = subprocess.run([sys.executable, "-m", "farm.cli", "verify", *where], env=env, capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
