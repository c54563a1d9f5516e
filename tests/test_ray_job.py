"""`ray job submit --working-dir . -- farm sweep ...` against a real single-node head started with `ray start`
(tests/ray_cluster.py starts and stops it)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from farm.store import StoreLocation, open_store, schema
from tests.conftest import CALIBRATION_DATA, REPO, write_spec
from tests.ray_cluster import LocalFleet

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def head() -> Iterator[tuple[dict[str, str], str]]:
    # One node that runs the jobs too: on a head with --num-cpus=0 and worker nodes, the job's driver
    # has died loading PyTorch now and then (oneMKL "Cannot load libtorch_cpu.so"); the fleet's own
    # tests drive multi-node clusters with `farm sweep --address` (tests/test_fleet.py).
    fleet = LocalFleet(dashboard=True, head_cpus=2)
    try:
        assert fleet.dashboard_url is not None
        yield fleet.env, fleet.dashboard_url
    finally:
        fleet.stop()


def test_sweep_runs_as_a_ray_job(head: tuple[dict[str, str], str], tmp_path: Path) -> None:
    env, address = head
    spec = write_spec(tmp_path, f"""
        name: job
        models:
          - {{name: tiny, source: "tests.models:tiny_cnn", weights: null, input_shape: [3, 32, 32]}}
        backends: {{onnxruntime: {{}}, torch: {{}}}}
        benchmark: {{warmup_s: 0, duration_s: 0.1, min_iterations: 3, window_s: 0.05, max_duration_s: 0.3}}
        fidelity: {{data: {CALIBRATION_DATA}, samples: 4}}
    """)
    data = tmp_path / "farm-data"
    command = [str(Path(sys.executable).with_name("ray")), "job", "submit", "--address", address, "--working-dir", ".",
               "--", "farm", "sweep", str(spec), "--data-dir", str(data)]
    for _attempt in range(12):
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        # The head's job agent comes up some seconds after `ray start` returns, later on a loaded machine.
        if "No available agent to submit job" not in result.stdout + result.stderr:
            break
        time.sleep(5)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Winners of sweep" in result.stdout
    assert "succeeded" in result.stdout + result.stderr
    store = open_store(StoreLocation.resolve(data), readonly=True)
    with store.session() as s:
        builds = s.scalars(select(schema.Build)).all()
        assert {b.backend for b in builds if b.status == "ok"} == {"onnxruntime", "torch"}
        assert s.scalars(select(schema.Sweep.status)).all() == ["finished"]
