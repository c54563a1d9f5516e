"""The CLI's contract: help everywhere, one-line errors with a non-zero exit, JSON where scripts read it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from farm.cli import app
from tests.conftest import CALIBRATION_DATA, REPO, write_spec
from tests.postgres import PostgresServer

runner = CliRunner()


@pytest.mark.parametrize("command", [[], ["sweep"], ["status"], ["best"], ["doctor"]])
def test_every_command_has_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_invalid_spec_is_one_line_and_exit_2(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "name: t\nmodels: [{name: a, source: 'torchvision:resnet18'}]\nbackends: {torch: {}}\n")
    result = subprocess.run([sys.executable, "-m", "farm.cli", "sweep", str(spec), "--data-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: {spec}: models[0].weights: required field is missing"]
    assert not (tmp_path / "farm.db").exists()  # nothing ran


@pytest.mark.parametrize(("options", "message"), [
    (["--redo-from", "bulid"], "--redo-from: stage 'bulid': expected one of export, reference, calibrate, variant, build"),
    (["--force", "--redo-from", "build"], "--force redoes every stage: give it or --redo-from, not both"),
])
def test_bad_redo_options_are_one_line(tmp_path: Path, options: list[str], message: str) -> None:
    spec = write_spec(tmp_path, f"""
        name: t
        models: [{{name: tiny, source: "tests.models:tiny_cnn", weights: null, input_shape: [3, 32, 32]}}]
        backends: {{onnxruntime: {{}}}}
        fidelity: {{data: {CALIBRATION_DATA}}}
    """)
    result = CliRunner().invoke(app, ["sweep", str(spec), "--data-dir", str(tmp_path / "data"), *options])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "data").exists()  # refused before the store was made


def test_bad_objective_is_rejected(tmp_path: Path) -> None:
    result = runner.invoke(app, ["best", "--objective", "fastest", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "--objective 'fastest': expected one of p50, p99, throughput" in result.output


def test_status_without_results_says_what_to_do(tmp_path: Path) -> None:
    result = runner.invoke(app, ["status", "--data-dir", str(tmp_path / "empty")])
    assert result.exit_code == 2
    assert "no results yet" in result.output and "farm sweep" in result.output


def test_doctor_json_lists_backends_and_targets() -> None:
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    names = {b["name"]: b for b in report["backends"]}
    assert names["onnxruntime"]["ok"] and names["torch"]["ok"]
    assert "datacenter: missing (pip install 'farm[tensorrt]')" in names["tensorrt"]["detail"]
    assert "runtime: none (no CUDA GPU: builds only)" in names["tensorrt"]["detail"]
    assert report["targets"][0].startswith("cpu:")
    assert report["device"]["cpu"]["logical_cores"] >= 1


@pytest.mark.parametrize(("value", "on"), [("1", True), ("yes", False)])
def test_doctor_tells_when_the_benchmark_only_node_is_host_switch_is_set(monkeypatch: pytest.MonkeyPatch, value: str, on: bool) -> None:
    plain = json.loads(runner.invoke(app, ["doctor", "--json"]).stdout)
    monkeypatch.setenv("FARM_NODE_IS_HOST", value)
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["node_is_host"] is on and plain["node_is_host"] is False
    # Outside a Ray task there is no node to split the machine by: the host stays the machine.
    assert report["device"]["host_id"] == plain["device"]["host_id"]
    warning = " ".join(result.stderr.split())
    assert ("benchmark only" in warning and "never set it on a real fleet" in warning) if on else "is ignored: only 1" in warning


MINIMAL_SPEC = ("name: t\nmodels: [{name: a, source: 'torchvision:resnet18', weights: null, input_shape: [3, 32, 32]}]\n"
                f"backends: {{torch: {{}}}}\ncalibration: {{data: {REPO / 'calibration_data'}}}\n")


def test_a_read_only_medium_is_one_line(tmp_path: Path) -> None:
    """A real read-only file system (tmpfs mounted ro in a mount namespace of its own, so nothing outlives the
    test): a new data dir there cannot be created, an existing one cannot be written; one line each."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("mounting a read-only file system needs root and unshare (CI runs as root)")
    spec, medium = write_spec(tmp_path, MINIMAL_SPEC), tmp_path / "medium"
    medium.mkdir()
    farm = f"{sys.executable} -m farm.cli sweep {spec} --data-dir"
    script = (f"mount -t tmpfs tmpfs {medium} && mkdir {medium}/old && mount -o remount,ro {medium} && "
              f"{farm} {medium}/new; {farm} {medium}/old")
    result = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert result.stderr.splitlines() == [
        f"error: cannot create the store in {medium}/new: read-only file system",
        f"error: cannot write to the store in {medium}/old: read-only file system",
    ], result.stderr
    assert result.returncode == 2


def test_status_on_an_empty_postgresql_database_says_what_to_do(postgres_url: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["status", "--data-dir", str(tmp_path), "--db-url", postgres_url])
    assert result.exit_code == 2
    assert "no results yet" in result.output and "has no farm tables" in result.output


def test_an_unreachable_database_is_one_line(postgres: PostgresServer, tmp_path: Path) -> None:
    """Opening, not reading: the connection itself failed (a server that is down, here a port nobody listens on)."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = postgres.url("farm").replace(f":{postgres.port}/", f":{closed.getsockname()[1]}/")
        result = runner.invoke(app, ["status", "--data-dir", str(tmp_path), "--db-url", url])
    assert result.exit_code == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot open the store {url}: connection failed") and "Connection refused" in line  # named


def test_store_failures_say_read_or_write(tmp_path: Path) -> None:
    """A refused write is worded as a write (a sweep used to say "cannot read the store" for anything)."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    from farm.cli.common import store_failure
    from farm.store import StoreLocation, open_store

    location = StoreLocation.resolve(tmp_path / "farm-data")
    open_store(location).close()
    reader = open_store(location, readonly=True)
    with reader.engine.connect() as connection:
        with pytest.raises(DBAPIError) as write:
            connection.execute(text("INSERT INTO targets (id, kind, name, last_seen) VALUES ('t', 'cpu', 't', CURRENT_TIMESTAMP)"))
        connection.rollback()
        with pytest.raises(DBAPIError) as read:
            connection.execute(text("SELECT * FROM no_such_table"))
    reader.close()
    database = location.data_dir / "farm.db"  # every line names the database it is about
    assert store_failure(write.value) == f"cannot write to the store {database}: attempt to write a readonly database"
    assert store_failure(read.value) == f"cannot read the store {database}: no such table: no_such_table"


def test_version_and_exit_codes_in_help() -> None:
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"], prog_name="farm")
    assert result.exit_code == 0 and result.stdout.strip() == f"farm {version('farm')}"
    described = " ".join(runner.invoke(app, ["--help"], prog_name="farm").stdout.replace("│", " ").split())
    for code in ("0 every job ok", "1 some jobs failed", "2 bad input or usage, nothing ran", "3 every job failed", "130 interrupted"):
        assert code in described, code


def test_a_usage_error_is_one_line_from_the_console_script(tmp_path: Path) -> None:
    """Through a real process (what the `farm` console script runs): no Click box, exit 2."""
    result = subprocess.run([sys.executable, "-m", "farm.cli", "best", "--min-top1-agreement", "1.5"], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path, env=os.environ | {"PYTHONPATH": str(REPO)})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: python -m farm.cli best: Invalid value for '--min-top1-agreement': Input should be less than or equal to 1 "
        "(see python -m farm.cli best --help)"]


@pytest.mark.parametrize(("states", "code"), [
    ({"a": "done", "b": "cached"}, 0),
    ({"a": "done", "b": "failed", "c": "blocked"}, 1),
    ({"a": "failed", "b": "blocked"}, 3),
])
def test_sweep_exit_codes(states: dict[str, str], code: int) -> None:
    from farm.cli.commands import sweep_exit_code

    assert sweep_exit_code(states) == code


@pytest.mark.parametrize(("statement", "reason", "line", "code"), [
    ("INSERT INTO x", "database or disk is full", "error: cannot write to the store: database or disk is full", 1),
    ("UPDATE x", "attempt to write a readonly database", "error: cannot write to the store: attempt to write a readonly database", 1),
    ("SELECT x", "unable to open database file", "error: cannot read the store: unable to open database file", 2),
])
def test_store_errors_say_whether_reading_or_writing_failed(statement: str, reason: str, line: str, code: int) -> None:
    """Issue 13: a full disk was worded `cannot read the store`."""
    import typer
    from sqlalchemy.exc import OperationalError

    from farm.cli.common import one_line_errors

    with pytest.raises(typer.Exit) as ended:
        with one_line_errors():
            raise OperationalError(statement, {}, Exception(reason))
    assert ended.value.exit_code == code
    # the message itself is checked through the console it prints to
    from farm.cli.common import _store_error

    assert f"error: {_store_error(OperationalError(statement, {}, Exception(reason)))[0]}" == line


NAN_SPEC = """
name: t
models: [{{name: tiny, source: "tests.models:tiny_cnn", weights: null, input_shape: [3, 32, 32]}}]
precisions: [fp32, int8]
backends: {{onnxruntime: {{}}}}
calibration: {{data: {data}, samples: 8}}
fidelity: {{samples: 4}}
"""


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_calibration_data_with_nan_or_inf_is_refused_naming_the_file(tmp_path: Path, bad: float) -> None:
    import numpy as np

    folder = tmp_path / "arrays"
    folder.mkdir()
    rows = np.random.default_rng(0).standard_normal((6, 3, 32, 32)).astype(np.float32)
    np.save(folder / "a.npy", rows)
    rows[4, 1, 5, 7] = bad
    np.save(folder / "b.npy", rows)
    spec = write_spec(tmp_path, NAN_SPEC.format(data=folder))
    result = subprocess.run([sys.executable, "-m", "farm.cli", "sweep", str(spec), "--data-dir", str(tmp_path / "data")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: {spec}: calibration.data: {folder / 'b.npy'}: row 4 holds 1 NaN or Inf values (inputs must be finite)"]
    assert not (tmp_path / "data").exists()  # refused before any work


def test_a_preprocess_that_would_make_images_nan_is_refused(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, f"""
        name: t
        models: [{{name: tiny, source: "tests.models:tiny_cnn", weights: null, input_shape: [3, 32, 32],
                   preprocess: {{resize: 36, crop: 32, std: [0.2, 0.0, 0.2]}}}}]
        backends: {{onnxruntime: {{}}}}
        fidelity: {{data: {CALIBRATION_DATA}}}
    """)
    result = CliRunner().invoke(app, ["sweep", str(spec), "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 2 and "models[0].preprocess.std" in result.output and "greater than 0" in result.output, result.output
    assert not (tmp_path / "data").exists()


def _onnx_file(path: Path, shape: list[int | str]) -> Path:
    """A one-node ONNX model (Relu) whose input has `shape` (a str is a named, dynamic dimension)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize(
    ("shape", "batch_sizes", "input_shape", "message"),
    [
        ([1, 3, 32, 32], [1, 8], [3, 32, 32],
         "net.onnx fixes input 'input' at batch 1 (shape [1, 3, 32, 32]) but batch sizes 1, 8 are asked for: "
         "export with dynamic_axes={'input': {0: 'batch'}}, or give this model batch_sizes: [1]"),
        (["batch", 3, 64, 64], [1, 8], [3, 32, 32],
         "net.onnx's input 'input' has shape [?, 3, 64, 64] but models[0].input_shape is [3, 32, 32]: give input_shape: [3, 64, 64]"),
    ],
    ids=["fixed-batch", "other-shape"],
)
def test_an_onnx_file_that_contradicts_the_spec_is_refused_before_any_work(
        tmp_path: Path, shape: list[int | str], batch_sizes: list[int], input_shape: list[int], message: str) -> None:
    model = _onnx_file(tmp_path / "net.onnx", shape)
    spec = write_spec(tmp_path, f"""
        name: t
        models: [{{name: net, source: {model}, weights: null, input_shape: {input_shape}}}]
        batch_sizes: {batch_sizes}
        backends: {{onnxruntime: {{}}}}
        fidelity: {{data: {CALIBRATION_DATA}}}
    """)
    result = subprocess.run([sys.executable, "-m", "farm.cli", "sweep", str(spec), "--data-dir", str(tmp_path / "data")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"error: {spec}: models[0].source: {message}"]
    assert not (tmp_path / "data").exists()  # refused before any work: no store, no Ray


def test_an_onnx_file_with_a_dynamic_batch_and_the_spec_s_shape_passes_the_checks(tmp_path: Path) -> None:
    from farm.run.spec import check_inputs, load_spec

    model = _onnx_file(tmp_path / "net.onnx", ["batch", 3, 32, 32])
    spec_file = write_spec(tmp_path, f"""
        name: t
        models: [{{name: net, source: {model}, input_shape: [3, 32, 32]}}]  # no weights: an ONNX file carries its own
        batch_sizes: [1, 8]
        backends: {{onnxruntime: {{}}}}
        fidelity: {{data: {CALIBRATION_DATA}}}
    """)
    spec, base = load_spec(spec_file)
    check_inputs(spec, base, str(spec_file))  # raises SpecError on a contradiction
