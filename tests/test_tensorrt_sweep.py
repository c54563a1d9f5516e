"""TensorRT through the whole farm: RTX engines built ahead of time in a sweep, failures recorded, absent flavours noted."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper
from sqlalchemy import select

from farm.run.driver import SweepResult, run_sweep
from farm.run.spec import load_spec
from farm.store import Store, StoreLocation, open_store, schema
from tests.conftest import CALIBRATION_DATA, write_spec

RtxSweep = tuple[Store, SweepResult, list[tuple[str, str]]]  # the store, the result, (build key, phase) progress

pytestmark = pytest.mark.slow


def _nonzero_model() -> bytes:
    """What sinks Faster R-CNN on TensorRT-RTX: a NonZero node (no plugin registered for it)."""
    graph = helper.make_graph(
        [helper.make_node("NonZero", ["input"], ["output"], name="find_boxes")],
        "nonzero",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("output", TensorProto.INT64, [4, "n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture(scope="module")
def rtx_sweep(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> RtxSweep:
    folder = tmp_path_factory.mktemp("rtx")
    (folder / "nonzero.onnx").write_bytes(_nonzero_model())
    spec_path = write_spec(folder, f"""
        name: rtx
        models:
          - {{name: tiny, source: "tests.models:tiny_cnn", weights: null, input_shape: [3, 32, 32]}}
          - {{name: nonzero, source: nonzero.onnx, weights: null, input_shape: [3, 32, 32]}}
        batch_sizes: [1, 4]
        backends:
          onnxruntime: {{}}
          tensorrt: {{workspace: [64MiB, unlimited], optimization_level: 2}}
        targets: [cpu, "rtx:sm_86", "rtx:sm_86+sm_89"]
        benchmark: {{warmup_s: 0.0, duration_s: 0.05, min_iterations: 3, window_s: 0.05, max_duration_s: 0.3}}
        fidelity: {{data: {CALIBRATION_DATA}, samples: 2}}
        limits: {{isolate_builds: false}}
    """)
    spec, base = load_spec(spec_path)
    store = open_store(StoreLocation.resolve(folder / "data"))
    progress: list[tuple[str, str]] = []
    result = run_sweep(spec, base, str(spec_path), store, on_build_progress=lambda job, phase, done, total: progress.append((job.key, phase)))
    return store, result, progress


def test_rtx_engines_for_each_target_and_workspace(rtx_sweep: RtxSweep) -> None:
    store, result, _progress = rtx_sweep
    with store.session() as s:
        builds = s.scalars(select(schema.Build).where(schema.Build.backend == "tensorrt")).all()
    tiny = [b for b in builds if "tiny" in b.label]
    assert {(b.target_id, b.options["workspace"]) for b in tiny} == {
        ("rtx:sm_86", "64MiB"), ("rtx:sm_86", "unlimited"), ("rtx:sm_86+sm_89", "64MiB"), ("rtx:sm_86+sm_89", "unlimited")
    }
    assert all(b.status == "ok" for b in tiny)
    for build in tiny:
        plan = store.artifacts.get(build.engine_sha256)
        assert plan[:4] == b"vtrt"
        extra = build.manifest["extra"]
        assert extra["flavour"] == "rtx"
        assert extra["compute_capabilities"] == build.target_id.removeprefix("rtx:").split("+")
        assert extra["optimization_level"] == 2
        assert extra["profile"] == {"input": [1, 4, 4]}
        assert extra["workspace_bytes"] == (64 << 20 if build.options["workspace"] == "64MiB" else None)
        assert build.backend_version.startswith("rtx ")
        assert "[VERBOSE]" in build.log or "[INFO]" in build.log
    # build-only: nothing here can run an RTX engine
    assert result.count("benchmark", "done") == 2 * 2  # the onnxruntime builds only: 2 models x 2 batch sizes
    with store.session() as s:
        benched = {b.build.backend for b in s.scalars(select(schema.Benchmark))}
    assert benched == {"onnxruntime"}


def test_rtx_builds_are_answered_as_built_not_timed(rtx_sweep: RtxSweep, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from farm.cli import app

    store = rtx_sweep[0]
    runner = CliRunner()
    data_dir = str(store.location.data_dir)
    best = runner.invoke(app, ["best", "--model", "tiny", "--json", "--data-dir", data_dir])
    assert best.exit_code == 0, best.output
    answer = json.loads(best.stdout)
    assert {w["target"].split(":")[0] for w in answer["winners"]} == {"cpu"}  # only the CPU was timed
    untimed = answer["built_not_timed"]
    assert {(u["target"], u["options"]["workspace"]) for u in untimed} == {
        ("rtx:sm_86", "64MiB"), ("rtx:sm_86", "unlimited"), ("rtx:sm_86+sm_89", "64MiB"), ("rtx:sm_86+sm_89", "unlimited")}
    assert all(u["engine_bytes"] > 0 and u["build_seconds"] > 0 and "nothing here can run" in u["why"] for u in untimed)
    table = runner.invoke(app, ["best", "--model", "tiny", "--data-dir", data_dir])
    assert "Built, not timed" in table.stdout and "rtx:sm_86+sm_89" in table.stdout
    # farm pull on a build-only target says which rule chose the engine
    pulled = runner.invoke(app, ["pull", "tiny", "--target", "rtx:sm_86+sm_89", "--rule", "smallest", "--out", str(tmp_path / "e"),
                                 "--data-dir", data_dir])
    assert pulled.exit_code == 0, pulled.output
    assert "built, not timed" in pulled.stdout and "rule smallest" in pulled.stdout
    assert (tmp_path / "e" / "engine.plan").read_bytes()[:4] == b"vtrt"
    asked = runner.invoke(app, ["pull", "tiny", "--target", "rtx:sm_86+sm_89", "--out", str(tmp_path / "f"), "--data-dir", data_dir])
    assert "rule timed-precision: fp32" in asked.stdout  # fp32 won on the CPU, the one timed target


def test_parser_failure_names_node_and_op(rtx_sweep: RtxSweep) -> None:
    store = rtx_sweep[0]
    with store.session() as s:
        failed = s.scalars(select(schema.Build).where(schema.Build.backend == "tensorrt", schema.Build.status == "failed")).all()
    assert failed and all("nonzero" in b.label for b in failed)
    assert all("'find_boxes' (NonZero)" in b.error for b in failed)


def test_build_progress_reaches_the_driver(rtx_sweep: RtxSweep) -> None:
    progress = rtx_sweep[2]
    assert {"Building engine"} <= {phase for _key, phase in progress}
    assert len({key for key, _phase in progress}) >= 4


def test_absent_flavour_is_a_note_and_the_rest_runs(ray_cluster: None, tmp_path: Path) -> None:
    spec_path = write_spec(tmp_path, f"""
        name: absent
        models: [{{name: tiny, source: "tests.models:tiny_cnn", weights: null, input_shape: [3, 32, 32]}}]
        backends: {{onnxruntime: {{}}, tensorrt: {{}}}}
        benchmark: {{warmup_s: 0.0, duration_s: 0.05, min_iterations: 3, window_s: 0.05, max_duration_s: 0.3}}
        fidelity: {{data: {CALIBRATION_DATA}, samples: 2}}
    """)
    spec, base = load_spec(spec_path)
    result = run_sweep(spec, base, str(spec_path), open_store(StoreLocation.resolve(tmp_path / "data")))
    # a CPU target only: TensorRT builds for GPU and rtx:sm_NN targets, and the note says how to get either
    assert any(note.startswith("backend tensorrt: runs on gpu/rtx targets; none is selected (cpu:") and "farm[tensorrt]" in note
               for note in result.plan.notes)
    assert result.count("build", "done") == 1 and result.count("benchmark", "done") == 1
