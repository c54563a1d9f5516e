"""No-op re-runs (issue 21, must-have 6) and a quiet Ray (must-have 7), against a real local Ray, real SQLite
and the real CLI in a subprocess where the terminal's text is what is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray
from sqlalchemy import func, select
from typer.testing import CliRunner

from farm.cli import app
from farm.results import queries
from farm.run.driver import run_sweep
from farm.run.ray_token import token_source
from farm.run.spec import load_spec
from farm.store import Store, StoreLocation, open_store, schema
from farm.store.record import Recorder
from tests.conftest import CALIBRATION_DATA, REPO, write_spec

pytestmark = pytest.mark.slow

MODEL = '{{name: {name}, source: "tests.models:{factory}", weights: null, input_shape: [3, 32, 32]}}'
SPEC = """
name: again
models: [{models}]
batch_sizes: [1]
backends: {{onnxruntime: {{intra_op_threads: 1}}}}
benchmark: {{warmup_s: 0, duration_s: 0.05, min_iterations: 3, window_s: 0.05, max_duration_s: 0.3}}
fidelity: {{data: {data}, samples: 2}}
"""


def _spec(folder: Path, *models: tuple[str, str], name: str = "spec.yaml") -> Path:
    listed = ", ".join(MODEL.format(name=model, factory=factory) for model, factory in models)
    return write_spec(folder, SPEC.format(models=listed, data=CALIBRATION_DATA), name)


def _status(data_dir: Path) -> dict[str, object]:
    shown = CliRunner().invoke(app, ["status", "--json", "--data-dir", str(data_dir)])
    assert shown.exit_code == 0, shown.output
    return json.loads(shown.stdout)


def test_a_rerun_that_changes_nothing_adds_no_sweep_and_one_with_work_does(ray_cluster: None, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    store = open_store(StoreLocation.resolve(data_dir))
    recorder = Recorder(store)
    one = _spec(tmp_path, ("tiny", "tiny_cnn"))
    two = _spec(tmp_path, ("tiny", "tiny_cnn"), ("small", "small_convnet"), name="two.yaml")

    def sweep(path: Path, redo: frozenset[str] = frozenset(), address: str | None = None) -> int:
        spec, base = load_spec(path)
        return run_sweep(spec, base, str(path), store, redo=redo, address=address).sweep_id

    def sweep_rows() -> int:
        with store.session() as s:
            return int(s.scalar(select(func.count()).select_from(schema.Sweep)) or 0)

    first = sweep(one)
    assert sweep(one) == first  # answered by the sweep it repeats, without Ray
    # through a cluster joined by address, the plan made after the probe finds nothing to do either
    assert sweep(one, address=ray.get_runtime_context().gcs_address) == first
    assert sweep_rows() == 1
    shown = _status(data_dir)
    assert shown["sweep"] == first and shown["reruns"] == 2 and shown["stages"]["build"]["done"] == 1  # type: ignore[index]

    with_new_model = sweep(two)  # tiny is cached, small runs: work, so a sweep of its own
    assert with_new_model != first and sweep_rows() == 2
    assert _status(data_dir)["sweep"] == with_new_model

    # the first spec again: its jobs are exactly the first sweep's, so it counts there, and status stays on the
    # newest sweep that did work
    assert sweep(one) == first and sweep_rows() == 2
    assert _status(data_dir)["sweep"] == with_new_model
    with store.session() as s:
        assert s.get(schema.Sweep, first).reruns == 3  # type: ignore[union-attr]

    # a forced re-run redoes the work: a sweep of its own, as before
    forced = sweep(one, redo=frozenset({"benchmark"}))
    assert forced not in (first, with_new_model) and sweep_rows() == 3 and _status(data_dir)["sweep"] == forced

    # a sweep answered whole by other sweeps' jobs and recorded as such (as farm did before re-runs were counted,
    # or a spec whose jobs no one sweep had): listed, but neither status nor the dashboard opens on it
    jobs = [(j.stage, j.key, j.label) for j in _jobs_of(store, first)]
    idle = recorder.start_sweep("again", str(one), {"name": "again"}, jobs, state="cached")
    recorder.finish_sweep(idle, "finished")
    with store.session() as s:
        listed = queries.sweeps(s)
        assert [row.id for row in listed][0] == forced and listed[-1].id == idle
        assert next(row for row in listed if row.id == first).reruns == 3
    assert _status(data_dir)["sweep"] == forced
    store.close()


def _jobs_of(store: Store, sweep_id: int) -> list[schema.SweepJob]:
    with store.session() as s:
        return list(s.scalars(select(schema.SweepJob).where(schema.SweepJob.sweep_id == sweep_id)))


def test_a_sweep_prints_nothing_of_ray_and_keeps_its_lines_in_the_data_dir(tmp_path: Path) -> None:
    """The real CLI, its own local Ray: Ray's token notice (RAY_AUTH_MODE unset, so Ray writes it) goes to
    <data-dir>/logs/ray.log; the identical re-run needs no Ray, prints the same winners and adds no sweep."""
    spec = _spec(tmp_path, ("tiny", "tiny_cnn"))
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))

    def farm_sweep() -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "farm.cli", "sweep", str(spec), "--data-dir", str(data_dir)],
                              capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr
        return done

    first = farm_sweep()
    printed = (first.stdout + first.stderr).splitlines()
    assert not [line for line in printed if "WARNING" in line or "authentication_token" in line], printed
    ray_log = (data_dir / "logs" / "ray.log").read_text()
    assert "authentication_token_setup.py" in ray_log and "Token authentication" in ray_log
    assert "Started a local Ray instance" in ray_log  # Ray's INFO lines are kept, not dropped

    again = farm_sweep()
    assert _winners(again.stdout) == _winners(first.stdout) and "Winners of sweep 1 (again)" in again.stdout
    assert not [line for line in (again.stdout + again.stderr).splitlines() if "WARNING" in line]
    shown = _status(data_dir)
    assert shown["sweep"] == 1 and shown["reruns"] == 1


def _winners(stdout: str) -> list[str]:
    """The winners table's rows, without the progress bars' timings."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Winners of sweep"))
    return lines[start:]


def test_doctor_names_where_rays_token_comes_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    default = home / ".ray" / "auth_token"
    assert token_source({}, home) == (f"the file {default}, which a local Ray writes on its first start "
                                      "(RAY_AUTH_MODE unset: a local Ray turns tokens on)")
    default.parent.mkdir(parents=True)
    default.write_text("secret")
    assert token_source({}, home).startswith(f"the file {default} (")
    named = tmp_path / "token"
    assert "does not exist" in token_source({"RAY_AUTH_TOKEN_PATH": str(named), "RAY_AUTH_MODE": "token"}, home)
    named.write_text("secret")
    assert token_source({"RAY_AUTH_TOKEN_PATH": str(named)}, home).startswith(f"the file {named}, named by RAY_AUTH_TOKEN_PATH (")
    # the variable holding the token itself comes first, as in Ray's loader
    assert token_source({"RAY_AUTH_TOKEN": "t", "RAY_AUTH_TOKEN_PATH": str(named)}, home).startswith("the RAY_AUTH_TOKEN environment")
    assert token_source({"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": "t"}, home).startswith("none: RAY_AUTH_MODE=disabled")
    assert token_source({"RAY_AUTH_MODE": "token"}, tmp_path / "nobody").startswith("missing: RAY_AUTH_MODE=token")

    monkeypatch.setenv("RAY_AUTH_TOKEN", "t")
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    shown = CliRunner().invoke(app, ["doctor"])
    assert shown.exit_code == 0
    assert [line for line in shown.stdout.splitlines() if line.startswith("ray token")] == [
        "ray token the RAY_AUTH_TOKEN environment variable (RAY_AUTH_MODE unset: a local Ray turns tokens on)"]
    as_json = json.loads(CliRunner().invoke(app, ["doctor", "--json"]).stdout)
    assert as_json["ray_token"].startswith("the RAY_AUTH_TOKEN environment variable")
