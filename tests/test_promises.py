"""The README's promises, each run for real (issue 22, must-have 9): `farm sweep` processes interrupted by
SIGINT and SIGTERM exit 130 and resume, `--force` redoes every job, `limits.job_timeout_s` cancels a job,
job keys follow the bytes of photos, labels and .onnx files, fp8 on ONNX Runtime is built at `basic`, and
`farm pull --precision` / `--batch` pick what they are asked for. Real CLI processes, a real local Ray,
real SQLite stores, real ONNX Runtime."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from sqlalchemy import select
from typer.testing import CliRunner

from farm.cli import app
from farm.run.driver import run_sweep
from farm.run.plan import expand
from farm.run.spec import load_spec
from farm.store import Store, StoreLocation, open_store, schema
from tests.conftest import CALIBRATION_DATA, REPO, write_spec
from tests.onnx_models import classifier_onnx
from tests.test_plan import CPU

PHOTOS = sorted(p for p in CALIBRATION_DATA.iterdir() if p.suffix == ".jpg")


# --- job keys follow the bytes of their inputs ------------------------------------------------------

KEYS_SPEC = """
name: keys
models:
  - {name: file, source: model.onnx, weights: null, input_shape: [3, 32, 32]}
  - {name: tiny, source: "tests.models:tiny_cnn", weights: null, input_shape: [3, 32, 32]}
precisions: [fp32, int8]
batch_sizes: [1]
backends: {onnxruntime: {}}
calibration: {data: calibration, samples: 8, methods: minmax}
fidelity: {data: judge, samples: 10, labels: labels.csv}
"""


def _keys(spec_path: Path) -> dict[tuple[str, str], str]:
    """Every job of the real plan, (stage, label) -> key."""
    plan = expand(*load_spec(spec_path), [CPU])
    keys = {(job.stage, job.label): job.key for job in plan.jobs}
    assert len(keys) == len(plan.jobs), "two jobs share a stage and label: the comparison below would miss one"
    return keys


def _flip_one_byte(path: Path, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if at is None else at] ^= 0x01
    path.write_bytes(bytes(data))


def _changed(before: dict[tuple[str, str], str], after: dict[tuple[str, str], str]) -> set[tuple[str, str]]:
    assert before.keys() == after.keys()
    return {job for job in before if before[job] != after[job]}


def test_job_keys_change_with_the_bytes_of_photos_labels_and_onnx_files(tmp_path: Path) -> None:
    (tmp_path / "calibration").mkdir()
    (tmp_path / "judge").mkdir()
    for photo in PHOTOS[:8]:
        shutil.copy(photo, tmp_path / "calibration" / photo.name)
    for photo in PHOTOS[20:30]:
        shutil.copy(photo, tmp_path / "judge" / photo.name)
    (tmp_path / "labels.csv").write_text("".join(f"{p.name},{i}\n" for i, p in enumerate(PHOTOS[20:30])))
    (tmp_path / "model.onnx").write_bytes(classifier_onnx((3, 32, 32), 10))
    spec = write_spec(tmp_path, KEYS_SPEC)
    first = _keys(spec)
    assert _keys(spec) == first  # the same bytes plan the same keys
    stages = {stage for stage, _ in first}
    assert {"export", "reference", "calibrate", "variant", "build", "benchmark", "fidelity"} <= stages

    # a calibration photo: the calibrations, the int8 variants and everything built from them, for both models
    _flip_one_byte(tmp_path / "calibration" / PHOTOS[3].name)
    after_photo = _keys(spec)
    changed = _changed(first, after_photo)
    # (a re-timing times every build of its model and target, so it follows them)
    int8 = {job for job in first if job[0] in ("calibrate", "retime") or "int8" in job[1]}
    assert changed == int8 and {label.split()[0] for _, label in changed} == {"file", "tiny"}

    # the labels file: what the held-out rows are judged against, so the references, every fidelity, and the int8
    # variants (the fallback judges them against the reference) with all built from them; no export, calibration or
    # fp32 build or timing
    labels = tmp_path / "labels.csv"
    _flip_one_byte(labels, labels.read_text().index(",3\n") + 1)  # a class id: 3 becomes 2
    changed = _changed(after_photo, after_labels := _keys(spec))
    assert changed == {job for job in first if job[0] in ("reference", "fidelity")} | (int8 - {j for j in int8 if j[0] == "calibrate"})

    # the .onnx file: every job of that model, and none of the other's
    model = tmp_path / "model.onnx"
    weights = numpy_helper.to_array(onnx.load(model).graph.initializer[0]).tobytes()
    _flip_one_byte(model, model.read_bytes().index(weights))  # the lowest bit of one weight: still a valid model
    changed = _changed(after_labels, _keys(spec))
    assert changed == {job for job in first if job[1].split()[0] == "file"}


# --- real `farm` processes on the tests' Ray cluster --------------------------------------------------

BENCHMARK = "benchmark: {warmup_s: 0, duration_s: 0.05, min_iterations: 3, window_s: 0.05, max_duration_s: 0.3}"


@dataclass(frozen=True)
class Farm:
    """`python -m farm.cli` in a process of its own, on one data dir; a sweep joins the tests' Ray cluster at
    `address` (RAY_ADDRESS) rather than starting one, which would cost each test its start; with None, it starts
    its own local Ray, as a person's `farm sweep` does."""

    data: Path
    address: str | None

    def _command(self, args: tuple[str, ...]) -> list[str]:
        return [sys.executable, "-m", "farm.cli", *args, "--data-dir", str(self.data)]

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        return env | ({"RAY_ADDRESS": self.address} if self.address else {})

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self._command(args), capture_output=True, text=True, timeout=300, env=self._env())

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self._command(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self._env())

    def store(self) -> Store:
        return open_store(StoreLocation.resolve(self.data), readonly=True)


def _jobs(store: Store, sweep_id: int) -> dict[tuple[str, str], str]:
    """(stage, key) -> the state the job ended in, in that sweep."""
    with store.session() as s:
        return {(j.stage, j.key): j.state for j in s.scalars(select(schema.SweepJob).where(schema.SweepJob.sweep_id == sweep_id))}


def _newest_sweep(store: Store) -> schema.Sweep:
    with store.session() as s:
        newest = s.scalars(select(schema.Sweep).order_by(schema.Sweep.id.desc()).limit(1)).one()
        s.expunge(newest)
        return newest


@pytest.fixture(scope="module")
def ray_address(ray_cluster: None) -> str:
    import ray

    return str(ray.get_runtime_context().gcs_address)


# --- Ctrl-C and SIGTERM: exit 130, stored as interrupted, resumed ------------------------------------

SLOW_SPEC = f"""
name: interrupted
models:
  - {{name: tiny, source: "tests.models:tiny_cnn", weights: null, input_shape: [3, 32, 32]}}
batch_sizes: [1, 2]
backends: {{onnxruntime: {{intra_op_threads: 1}}}}
benchmark: {{warmup_s: 0, duration_s: 0.6, min_iterations: 3, window_s: 0.3, max_duration_s: 1}}
fidelity: {{data: {CALIBRATION_DATA}, samples: 2}}
selection: {{retime: {{enabled: false}}}}
limits: {{isolate_builds: false}}
"""


def _interrupt_while_timing(farm: Farm, spec: Path, signum: signal.Signals, after_sweep: int) -> tuple[int, subprocess.CompletedProcess[str]]:
    """Start `farm sweep SPEC`, send it `signum` once a benchmark of its own sweep (newer than `after_sweep`) runs;
    its sweep id and how the process ended."""
    from sqlalchemy.exc import DBAPIError

    process = farm.start("sweep", str(spec))
    store: Store | None = None
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            if (farm.data / "farm.db").exists():
                store = store or farm.store()
                try:
                    with store.session() as s:
                        running = s.scalar(select(schema.SweepJob.sweep_id).where(
                            schema.SweepJob.sweep_id > after_sweep, schema.SweepJob.stage == "benchmark",
                            schema.SweepJob.state == "running").limit(1))
                except DBAPIError:  # the store is being created
                    running = None
                if running is not None:
                    process.send_signal(signum)
                    stdout, stderr = process.communicate(timeout=120)
                    return int(running), subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
            time.sleep(0.2)
        raise AssertionError(f"no benchmark ran before the sweep ended (exit {process.poll()}): nothing to interrupt")
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        if store is not None:
            store.close()


@dataclass(frozen=True)
class Stopped:
    """One `farm sweep` stopped by a signal: how it ended and the store's account of its sweep."""

    signal: signal.Signals
    ended: subprocess.CompletedProcess[str]
    status: str  # the sweep row's
    states: dict[tuple[str, str], str]  # its jobs'


@dataclass(frozen=True)
class Resumed:
    farm: Farm
    spec: Path
    stopped: list[Stopped]
    sweep_id: int  # the run that finished
    states: dict[tuple[str, str], str]


@pytest.fixture(scope="module")
def resumed(ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> Resumed:
    """`farm sweep` stopped by SIGINT while it times (on the tests' cluster), run again and stopped by SIGTERM (on a
    local Ray of its own: ray.init puts in a SIGTERM handler of Ray's), then run to its end."""
    folder = tmp_path_factory.mktemp("interrupted")
    farm = Farm(folder / "data", ray_address)
    spec = write_spec(folder, SLOW_SPEC)
    stopped, sweep_id = [], 0
    for signum, on in ((signal.SIGINT, farm), (signal.SIGTERM, replace(farm, address=None))):
        sweep_id, ended = _interrupt_while_timing(on, spec, signum, sweep_id)
        with closing(farm.store()) as store:
            stopped.append(Stopped(signum, ended, _newest_sweep(store).status, _jobs(store, sweep_id)))
    # the last run in this process (a third CLI start would add only its imports); run_sweep is what `farm sweep` runs
    store = open_store(StoreLocation.resolve(farm.data))
    try:
        result = run_sweep(*load_spec(spec), str(spec), store)
        return Resumed(farm, spec, stopped, result.sweep_id, _jobs(store, result.sweep_id))
    finally:
        store.close()


@pytest.mark.slow
def test_sigint_and_sigterm_exit_130_store_the_sweep_as_interrupted_and_it_resumes(resumed: Resumed) -> None:
    finished: set[tuple[str, str]] = set()  # jobs done by an earlier, stopped run
    for run in resumed.stopped:
        assert run.ended.returncode == 130, (run.signal, run.ended.stderr)
        assert "interrupted: finished results are kept; run the same sweep again to resume" in run.ended.stderr
        assert run.status == "interrupted"
        assert "running" not in run.states.values() and "interrupted" in run.states.values()
        assert all(run.states[job] == "cached" for job in finished), "a job finished before the interruption was done again"
        finished |= {job for job, state in run.states.items() if state == "done"}
        assert any(stage == "build" for stage, _ in finished)
    # the run to the end: what was finished is read back, the rest is done
    assert {job for job, state in resumed.states.items() if state == "cached"} == finished
    assert set(resumed.states.values()) == {"cached", "done"} and "done" in resumed.states.values()
    with closing(resumed.farm.store()) as store:
        assert _newest_sweep(store).status == "finished"


@pytest.mark.slow
def test_force_redoes_every_job(resumed: Resumed, tmp_path: Path) -> None:
    """`farm sweep --force`, on a copy of a store that holds every job of the spec: each is run again, none read back."""
    farm = Farm(tmp_path / "data", resumed.farm.address)
    shutil.copytree(resumed.farm.data, farm.data)
    forced = farm.run("sweep", str(resumed.spec), "--force")
    assert forced.returncode == 0, forced.stderr
    with closing(farm.store()) as store:
        newest = _newest_sweep(store)
        states = _jobs(store, newest.id)
        assert newest.id != resumed.sweep_id and states.keys() == resumed.states.keys()
        assert set(states.values()) == {"done"}, states
        with store.session() as s:  # every stored row was written again by the forced sweep
            for table in (schema.Model, schema.Reference, schema.Variant, schema.Build, schema.Benchmark, schema.Fidelity):
                written = s.scalars(select(table.created_at)).all()  # type: ignore[attr-defined]
                assert written and min(written) >= newest.started_at, table.__name__


# --- limits.job_timeout_s -----------------------------------------------------------------------------

@pytest.mark.slow
def test_a_job_past_its_timeout_is_cancelled_and_recorded_as_timed_out(ray_address: str, tmp_path: Path) -> None:
    farm = Farm(tmp_path / "data", ray_address)
    spec = write_spec(tmp_path, f"""
        name: timeout
        models:
          - {{name: slow, source: "tests.models:slow_to_export", weights: null, input_shape: [3, 32, 32]}}
        batch_sizes: [1]
        backends: {{onnxruntime: {{intra_op_threads: 1}}}}
        {BENCHMARK}
        fidelity: {{data: {CALIBRATION_DATA}, samples: 2}}
        limits: {{job_timeout_s: 3}}
    """)
    ended = farm.run("sweep", str(spec))
    assert ended.returncode == 3, ended.stderr  # nothing came of it: its one export failed
    with closing(farm.store()) as store, store.session() as s:
        [export] = s.scalars(select(schema.Model)).all()
        assert export.status == "failed" and export.error == "timed out after 3 s"
        states = {j.stage: j.state for j in s.scalars(select(schema.SweepJob))}
    assert states.pop("export") == "failed" and set(states.values()) == {"blocked"}


# --- one real sweep for fp8 and pull ----------------------------------------------------------

# Two ONNX Runtime blocks, each timed at one batch size: the build that `pull --batch 8` must deliver is not
# the one a plain pull (p50: the smallest batch) delivers. fp8 asks for graph optimization `all` (the default).
SWEPT_SPEC = f"""
name: promised
models:
  - {{name: tiny, source: "tests.models:tiny_cnn", weights: null, input_shape: [3, 32, 32]}}
precisions: [fp32, fp8]
batch_sizes: [1, 8]
backends:
  onnxruntime: [{{intra_op_threads: 1, batch_sizes: [1]}}, {{intra_op_threads: 2, batch_sizes: [8]}}]
calibration: {{data: {CALIBRATION_DATA}, samples: 4, methods: minmax}}
fidelity: {{data: {CALIBRATION_DATA}, samples: 2, min_top1_agreement: 0}}
{BENCHMARK}
selection: {{retime: {{enabled: false}}}}
limits: {{isolate_builds: false}}
"""


@pytest.fixture(scope="module")
def swept(ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> Farm:
    """The store of one finished `farm sweep` of SWEPT_SPEC."""
    folder = tmp_path_factory.mktemp("promised")
    farm = Farm(folder / "data", ray_address)
    ended = farm.run("sweep", str(write_spec(folder, SWEPT_SPEC)))
    assert ended.returncode == 0, ended.stderr
    return farm


def _builds(farm: Farm) -> list[schema.Build]:
    with closing(farm.store()) as store, store.session() as s:
        found = list(s.scalars(select(schema.Build).where(schema.Build.status == "ok")))
        for build in found:
            s.expunge(build)
        return found


def _precision(build: schema.Build) -> str:
    return str((build.manifest or {})["precision"])


@pytest.mark.slow
def test_fp8_on_onnx_runtime_is_built_at_basic_and_the_manifest_records_it(swept: Farm) -> None:
    builds = _builds(swept)
    assert sorted(_precision(b) for b in builds) == ["fp32", "fp32", "fp8", "fp8"]
    for build in builds:
        assert build.options.get("graph_optimization_level", "all") == "all"  # what the spec asked for
        level = "ORT_ENABLE_BASIC" if _precision(build) == "fp8" else "ORT_ENABLE_ALL"
        assert f"graph_optimization_level: {level}" in (build.log or ""), build.log
        assert (build.manifest or {})["extra"].get("graph_optimization_level_used") == ("basic" if _precision(build) == "fp8" else None)


def _pull(swept: Farm, out: Path, *args: str) -> tuple[dict[str, Any], str]:
    """`farm pull tiny --target cpu ARGS`: the manifest it wrote and what it printed. (In this process: a
    process of its own costs seconds of imports, and the sweeps above already run the CLI as one.)"""
    ended = CliRunner().invoke(app, ["pull", "tiny", "--target", "cpu", "--out", str(out), "--data-dir", str(swept.data), *args])
    assert ended.exit_code == 0, ended.output
    return json.loads((out / "manifest.json").read_text()), ended.stdout


def _runs_in_onnx_runtime(engine: Path, batch: int) -> None:
    """The delivered file is a model ONNX Runtime loads and runs: one output row of finite scores per input."""
    session = ort.InferenceSession(str(engine), providers=["CPUExecutionProvider"])
    [scores] = session.run(None, {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal((batch, 3, 32, 32), dtype=np.float32)})
    assert scores.shape == (batch, 10) and np.isfinite(scores).all()


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp8", "fp32"])
def test_pull_precision_delivers_that_precision(swept: Farm, tmp_path: Path, precision: str) -> None:
    manifest, _printed = _pull(swept, tmp_path / "out", "--precision", precision)
    assert manifest["precision"] == precision
    assert manifest["extra"].get("graph_optimization_level_used") == ("basic" if precision == "fp8" else None)
    _runs_in_onnx_runtime(tmp_path / "out" / "engine.onnx", 1)


@pytest.mark.slow
def test_pull_batch_8_delivers_the_winner_at_batch_8(swept: Farm, tmp_path: Path) -> None:
    plain, printed = _pull(swept, tmp_path / "plain")
    at_8, printed_8 = _pull(swept, tmp_path / "at8", "--batch", "8")
    # only the intra_op_threads=2 builds were timed at batch 8, only the others at batch 1
    assert plain["options"]["intra_op_threads"] == 1 and "batch 1," in printed
    assert at_8["options"]["intra_op_threads"] == 2 and "batch 8," in printed_8
    assert [b["batch_size"] for b in at_8["benchmarks"]] == [8]
    _runs_in_onnx_runtime(tmp_path / "at8" / "engine.onnx", 8)
