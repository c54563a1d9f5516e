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
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from sqlalchemy import select

from farm.run.driver import run_sweep
from farm.run.plan import expand
from farm.run.spec import load_spec
from farm.store import Store, StoreLocation, open_store, schema
from tests.conftest import CALIBRATION_DATA, REPO, write_spec
from tests.test_plan import CPU

PHOTOS = sorted(p for p in CALIBRATION_DATA.iterdir() if p.suffix == ".jpg")


def classifier_onnx(input_shape: tuple[int, int, int], classes: int, seed: int = 0) -> bytes:
    """A real, tiny ONNX classifier over [batch, *input_shape]: global average pool, then a Gemm to `classes`."""
    rng = np.random.default_rng(seed)
    channels = input_shape[0]
    weight = helper.make_tensor("weight", TensorProto.FLOAT, [channels, classes], rng.standard_normal((channels, classes)).astype(np.float32).ravel())
    bias = helper.make_tensor("bias", TensorProto.FLOAT, [classes], rng.standard_normal(classes).astype(np.float32))
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("Gemm", ["flat", "weight", "bias"], ["output"])],
        "classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *input_shape])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", classes])],
        [weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every ONNX Runtime the farm supports
    onnx.checker.check_model(model)
    return model.SerializeToString()


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
    weights = onnx.numpy_helper.to_array(onnx.load(model).graph.initializer[0]).tobytes()
    _flip_one_byte(model, model.read_bytes().index(weights))  # the lowest bit of one weight: still a valid model
    changed = _changed(after_labels, _keys(spec))
    assert changed == {job for job in first if job[1].split()[0] == "file"}


# --- real `farm` processes on the tests' Ray cluster --------------------------------------------------

BENCHMARK = "benchmark: {warmup_s: 0, duration_s: 0.05, min_iterations: 3, window_s: 0.05, max_duration_s: 0.3}"


@dataclass(frozen=True)
class Farm:
    """`python -m farm.cli` in a process of its own, on one data dir; a sweep joins the tests' Ray cluster
    (RAY_ADDRESS) rather than starting one, which would cost each test its start."""

    data: Path
    address: str

    def _command(self, args: tuple[str, ...]) -> list[str]:
        return [sys.executable, "-m", "farm.cli", *args, "--data-dir", str(self.data)]

    def _env(self) -> dict[str, str]:
        return os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                             "RAY_ADDRESS": self.address}

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
batch_sizes: [1, 2, 4]
backends: {{onnxruntime: {{intra_op_threads: 1}}}}
benchmark: {{warmup_s: 0, duration_s: 1, min_iterations: 3, window_s: 0.5, max_duration_s: 1.5}}
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


def test_sigint_and_sigterm_exit_130_store_the_sweep_as_interrupted_and_it_resumes(ray_address: str, tmp_path: Path) -> None:
    farm = Farm(tmp_path / "data", ray_address)
    spec = write_spec(tmp_path, SLOW_SPEC)
    finished: set[tuple[str, str]] = set()  # jobs done by an earlier, interrupted run
    sweep = 0
    for signum in (signal.SIGINT, signal.SIGTERM):
        sweep, ended = _interrupt_while_timing(farm, spec, signum, sweep)
        assert ended.returncode == 130, ended.stderr
        assert "interrupted: finished results are kept; run the same sweep again to resume" in ended.stderr
        shown = farm.run("status", "--json")
        assert json.loads(shown.stdout)["stored_status"] == "interrupted", shown.stdout
        with closing(farm.store()) as store:
            assert _newest_sweep(store).status == "interrupted"
            states = _jobs(store, sweep)
        assert "running" not in states.values() and "interrupted" in states.values()
        assert all(states[job] == "cached" for job in finished), "a job finished before the interruption was done again"
        finished |= {job for job, state in states.items() if state == "done"}
        assert any(stage == "build" for stage, _ in finished)

    resumed = farm.run("sweep", str(spec))
    assert resumed.returncode == 0, resumed.stderr
    with closing(farm.store()) as store:
        last = _newest_sweep(store)
        assert last.id > sweep and last.status == "finished"
        states = _jobs(store, last.id)
    assert {job for job, state in states.items() if state == "cached"} == finished
    assert set(states.values()) == {"cached", "done"} and any(state == "done" for state in states.values())
