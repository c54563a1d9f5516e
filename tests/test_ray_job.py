"""`ray job submit --working-dir . -- farm sweep ...` against a real single-node head started with `ray start`."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from farm.store import StoreLocation, open_store, schema
from tests.conftest import CALIBRATION_DATA, REPO, write_spec

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], str]]:
    ray = str(Path(sys.executable).with_name("ray"))
    temp = tmp_path_factory.mktemp("ray")
    env = dict(os.environ)
    # Ray 2.60 turns token auth on once ~/.ray/auth_token exists, and `ray start` then needs a token;
    # a fresh one in the environment works on a fresh machine and on one where the file exists.
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")
    env.pop("RAY_ADDRESS", None)
    dashboard = _free_port()
    subprocess.run(
        [ray, "start", "--head", f"--port={_free_port()}", "--num-cpus=2", "--include-dashboard=true",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--temp-dir={temp}", "--disable-usage-stats",
         # The session's own local Ray may hold the default agent ports; a second head needs its own.
         f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
         f"--runtime-env-agent-port={_free_port()}", f"--metrics-export-port={_free_port()}"],
        env=env, check=True, capture_output=True, timeout=120,
    )
    try:
        yield env, f"http://127.0.0.1:{dashboard}"
    finally:
        _stop_cluster_under(temp)
        shutil.rmtree(temp, ignore_errors=True)


def _stop_cluster_under(temp: Path) -> None:
    """Stop only this head's processes: `ray stop` would also end the session's own local Ray."""
    import psutil

    mine = []
    for process in psutil.process_iter(["cmdline"]):
        if str(temp) in " ".join(process.info["cmdline"] or []):
            mine.append(process)
    for process in mine:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _gone, alive = psutil.wait_procs(mine, timeout=15)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()


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
