"""A fleet of Ray nodes (one machine, several `ray start` nodes): jobs on the nodes of their target, one timing per host, nodes that die and drivers killed
mid-sweep. Every driver here is a real `farm` process against a real multi-node cluster.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from farm.store import StoreLocation, open_store, schema
from tests.conftest import CALIBRATION_DATA, REPO, write_spec
from tests.ray_cluster import LocalFleet

pytestmark = pytest.mark.slow

FARM = str(Path(sys.executable).with_name("farm"))


@pytest.fixture(scope="module")
def labelled() -> Iterator[tuple[LocalFleet, dict[str, str]]]:
    """A head that only coordinates (and takes `ray job submit`) and two single-CPU nodes, labelled alpha and beta."""
    fleet = LocalFleet(dashboard=True)
    try:
        nodes = {label: fleet.add_node(cpus=1, labels=(label,)) for label in ("alpha", "beta")}
        yield fleet, nodes
    finally:
        fleet.stop()


def _spec(folder: Path, name: str, models: int = 1, batch_sizes: str = "[1, 2]", duration_s: float = 0.2) -> Path:
    listed = ", ".join(f'{{name: tiny{i}, source: "tests.models:tiny_cnn", weights: null, input_shape: [3, 32, 32]}}'
                       for i in range(models))
    return write_spec(folder, f"""
        name: {name}
        models: [{listed}]
        backends: {{onnxruntime: {{}}}}
        batch_sizes: {batch_sizes}
        benchmark: {{warmup_s: 0, duration_s: {duration_s}, min_iterations: 3, window_s: {duration_s / 4}, max_duration_s: {duration_s * 3}}}
        fidelity: {{data: {CALIBRATION_DATA}, samples: 4}}
        selection: {{retime: {{enabled: false}}}}
    """)


@dataclass(frozen=True)
class Row:
    kind: str  # the stage table's class name
    key: str
    status: str
    error: str | None
    created_at: Any
    device: dict[str, Any]
    target: str | None  # the label of the build's target (its id when unlabelled), for builds and what measured them


def _rows(data: Path) -> list[Row]:
    """Every stage row of the store, with the label of its build's target where it has one."""
    store = open_store(StoreLocation.resolve(data), readonly=True)
    with store.session() as s:
        targets = {b.key: b.target_id for b in s.scalars(select(schema.Build))}
        rows = []
        for table in schema.STAGE_TABLES.values():
            for row in s.scalars(select(table)):
                target = targets.get(getattr(row, "build_key", None) or row.key)
                rows.append(Row(table.__name__, row.key, row.status, row.error, row.created_at, row.device or {},
                                target.rsplit("[", 1)[1].rstrip("]") if target and "[" in target else target))
        return rows


def _sweep_jobs(data: Path) -> list[schema.SweepJob]:
    store = open_store(StoreLocation.resolve(data), readonly=True)
    with store.session() as s:
        return list(s.scalars(select(schema.SweepJob).order_by(schema.SweepJob.sweep_id, schema.SweepJob.id)).all())


def _wait_for(what: str, check: Any, timeout_s: float = 300, process: subprocess.Popen[str] | None = None) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the sweep ended before {what}: {process.stdout.read() if process.stdout else ''}"[-3000:])
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _running_on(data: Path, node: str, stages: tuple[str, ...], started_within_s: float | None = None) -> str | None:
    """The key of a job of these stages that the store says runs on `node` now (and started at most
    `started_within_s` ago, so that it is sure to be still running when the test acts on it)."""
    now = datetime.now(UTC)

    def fresh(job: schema.SweepJob) -> bool:
        if started_within_s is None:
            return True
        started = job.started_at if job.started_at is None or job.started_at.tzinfo else job.started_at.replace(tzinfo=UTC)
        return started is not None and (now - started).total_seconds() < started_within_s

    return next((j.key for j in _safe(_sweep_jobs, data)
                 if j.state == "running" and j.stage in stages and node[:8] in (j.node or "") and fresh(j)), None)


@pytest.mark.parametrize("submitted", [False, True], ids=["farm-sweep-address", "ray-job-submit"])
def test_each_target_runs_on_its_labelled_nodes_and_a_timing_holds_its_host(labelled: tuple[LocalFleet, dict[str, str]],
                                                                              tmp_path: Path, submitted: bool) -> None:
    """Driven from a shell with `farm sweep --address`, or as a Ray job whose driver runs on the head."""
    fleet, nodes = labelled
    spec = _spec(tmp_path, "fleet")
    data = tmp_path / "farm-data"
    sweep = ["farm", "sweep", str(spec), "--data-dir", str(data)]
    if submitted:
        result = fleet.submit_job(sweep, cwd=REPO)
        assert "succeeded" in result.stdout + result.stderr, result.stdout[-3000:] + result.stderr[-3000:]
    else:
        result = subprocess.run([FARM, *sweep[1:], "--address", fleet.address], env=fleet.env, capture_output=True, text=True,
                                timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Winners of sweep" in result.stdout

    rows = _rows(data)
    assert {r.target for r in rows if r.kind == "Build"} == {"alpha", "beta"}
    assert all(r.status == "ok" for r in rows), [(r.key, r.error) for r in rows if r.status != "ok"]
    ran = [r for r in rows if r.device]  # an fp32 variant is the exported model itself: no task makes it
    assert {r.kind for r in rows} - {r.kind for r in ran} == {"Variant"}
    for row in ran:
        assert row.device["ray_node"] in nodes.values(), "the head (0 CPUs) ran nothing"
        if row.target is not None:  # builds, benchmarks and fidelity ran on a node of their target
            assert row.device["ray_node"] == nodes[row.target], row.key

    # Both nodes share this machine (one host id), so a timing held it alone: no job of any node overlaps a benchmark.
    assert len({r.device["host_id"] for r in ran}) == 1
    for benchmark, others in _overlaps(ran):
        assert not others, f"benchmark {benchmark.key} overlapped {[(o.kind, o.key) for o in others]}"

    status = subprocess.run([FARM, "status", "--json", "--data-dir", str(data)], env=fleet.env, capture_output=True, text=True,
                            timeout=120)
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["running"] == [] and shown["eta_s"] is None
    per_node = {n["node"].split(" ")[1]: n for n in shown["nodes"]}
    assert set(per_node) == {n[:8] for n in nodes.values()}
    assert sum(n["done"] for n in per_node.values()) == len(ran)
    assert all(n["done"] > 0 and n["failed"] == 0 for n in per_node.values())


def _overlaps(ran: list[Row]) -> list[tuple[Row, list[Row]]]:
    """Each benchmark with the jobs whose recorded run (wall clock, from the worker) overlapped it."""
    def overlap(a: Row, b: Row) -> bool:
        return a.key != b.key and a.device["started"] < b.device["ended"] and b.device["started"] < a.device["ended"]

    return [(b, [o for o in ran if overlap(b, o)]) for b in ran if b.kind == "Benchmark"]


def test_nodes_with_the_benchmark_only_switch_are_hosts_of_their_own_and_time_at_once(tmp_path: Path) -> None:
    """FARM_NODE_IS_HOST=1 at `ray start` (benchmarks/fleet_scaling.py --device-hosts): two nodes of one machine
    count as two hosts, so each holds only itself for a timing, and timings of the two run at once. Each node is
    pinned to a CPU of its own, as the benchmark starts them: its raylet and the workers it started stay there."""
    fleet = LocalFleet()
    try:
        pinned = {fleet.add_node(cpus=1, own_host=True, cores=[cpu]): cpu for cpu in (0, 1)}
        nodes = set(pinned)
        spec = _spec(tmp_path, "own-hosts", models=3, batch_sizes="[1, 2, 4]", duration_s=1.0)
        data = tmp_path / "farm-data"
        result = subprocess.run([FARM, "sweep", str(spec), "--data-dir", str(data), "--address", fleet.address], env=fleet.env,
                                capture_output=True, text=True, timeout=900)
        for node, raylet in fleet._raylets().items():
            if node in pinned:
                started = raylet.children(recursive=True)  # its agents and workers ("ray::IDLE" between tasks)
                assert any(" ".join(p.cmdline()).startswith("ray::") for p in started), "the node's workers are still up"
                assert {tuple(p.cpu_affinity()) for p in [raylet, *started]} == {(pinned[node],)}
    finally:
        fleet.stop()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ran = [r for r in _rows(data) if r.device]
    hosts = {r.device["ray_node"]: r.device["host_id"] for r in ran}
    assert set(hosts) == nodes, "both nodes ran jobs"
    assert len(set(hosts.values())) == 2, hosts
    assert all(r.device["host_id"] == hosts[r.device["ray_node"]] for r in ran), "a node reports one host"
    # Still one timing per host: nothing of its own node overlaps a benchmark, but another node's timing did.
    at_once = []
    for benchmark, others in _overlaps(ran):
        node = benchmark.device["ray_node"]
        assert all(o.device["ray_node"] != node for o in others), f"benchmark {benchmark.key} shared its node"
        at_once += [o for o in others if o.kind == "Benchmark"]
    assert at_once, "no two benchmarks of the two nodes ran at once"


def test_a_killed_driver_resumes_without_redoing_finished_jobs(labelled: tuple[LocalFleet, dict[str, str]], tmp_path: Path) -> None:
    fleet, _nodes = labelled
    spec = _spec(tmp_path, "resume", models=2, batch_sizes="[1, 2, 4]", duration_s=0.5)
    data = tmp_path / "farm-data"
    command = [FARM, "sweep", str(spec), "--data-dir", str(data), "--address", fleet.address]
    first = subprocess.Popen(command, env=fleet.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for("some jobs to finish", lambda: sum(j.state == "done" for j in _safe(_sweep_jobs, data)) >= 6, process=first)
        first.send_signal(signal.SIGKILL)  # no handler runs: as if its machine died
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    before = {(r.kind, r.key): r.created_at for r in _rows(data) if r.status == "ok"}
    assert before

    second = subprocess.run(command, env=fleet.env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    jobs = _sweep_jobs(data)
    latest = max(j.sweep_id for j in jobs)
    resumed = {(j.stage, j.key): j.state for j in jobs if j.sweep_id == latest}
    assert set(resumed.values()) <= {"done", "cached"}
    after = {(r.kind, r.key): r for r in _rows(data)}
    assert all(r.status == "ok" for r in after.values())
    # What the killed driver finished is kept as it was (same row, same time) and read back, not redone.
    for (kind, key), created in before.items():
        assert after[(kind, key)].created_at == created, (kind, key)
    cached = sum(state == "cached" for state in resumed.values())
    assert cached >= len(before), (cached, len(before))
    assert any(state == "done" for state in resumed.values()), "the killed sweep had work left"


def _safe(read: Any, *args: Any) -> Any:
    try:
        return read(*args)
    except Exception:  # the store is still being created by the driver
        return []


def test_nodes_that_die_hand_their_jobs_on_and_a_target_with_none_left_fails_alone(tmp_path: Path) -> None:
    """Two nodes serve `pool`, one serves `solo`. One pool node dies mid-job: its job moves to another, and
    a pool node that joins takes pending work. The solo node dies: that target's remaining jobs fail at
    once, pool's all finish, the sweep ends (exit 1)."""
    fleet = LocalFleet()
    try:
        pool = [fleet.add_node(cpus=1, labels=("pool",)) for _ in range(2)]
        solo = fleet.add_node(cpus=1, labels=("solo",))
        spec = _spec(tmp_path, "deaths", models=3, batch_sizes="[1, 2, 4]", duration_s=1.0)
        data = tmp_path / "farm-data"
        sweep = subprocess.Popen([FARM, "sweep", str(spec), "--data-dir", str(data), "--address", fleet.address],
                                 env=fleet.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            victim, moved = _wait_for("a pool node running a job", lambda: next(
                ((n, key) for n in pool if (key := _running_on(data, n, ("benchmark",), started_within_s=0.5))), None), process=sweep)
            fleet.kill_node(victim)
            joined = fleet.add_node(cpus=1, labels=("pool",))
            # `farm status` from another shell, while the sweep runs: its nodes, its running jobs and a time left
            status = subprocess.run([FARM, "status", "--json", "--data-dir", str(data)], capture_output=True, text=True, timeout=120)
            shown = json.loads(status.stdout)
            assert shown["status"] == "running" and shown["nodes"] and shown["eta_s"] > 0, shown
            _wait_for("the solo node running a job", lambda: _running_on(data, solo, ("build", "benchmark", "fidelity")), process=sweep)
            fleet.kill_node(solo)
            output, _ = sweep.communicate(timeout=900)
        finally:
            if sweep.poll() is None:
                sweep.kill()
        assert sweep.returncode == 1, output[-3000:]

        rows = _rows(data)
        by_target: dict[str | None, list[Row]] = {"pool": [], "solo": [], None: []}
        for row in rows:
            by_target[row.target].append(row)
        assert by_target["pool"] and all(r.status == "ok" for r in by_target["pool"]), \
            [(r.key, r.error) for r in by_target["pool"] if r.status != "ok"]
        (moved_row,) = [r for r in rows if r.key == moved]
        assert moved_row.status == "ok" and moved_row.device["ray_node"] in (*pool, joined) and moved_row.device["ray_node"] != victim
        assert any(r.device["ray_node"] == joined for r in by_target["pool"]), "the node that joined took pending jobs of its target"
        failed = [j for j in _sweep_jobs(data) if j.state == "failed"]
        assert failed and all("solo" in j.label or "[solo]" in (j.error or "") for j in failed), \
            [(j.label, j.error) for j in failed]
        assert any("no live node" in (j.error or "") or "died" in (j.error or "") for j in failed), [j.error for j in failed]
    finally:
        fleet.stop()
