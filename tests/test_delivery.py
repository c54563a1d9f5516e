"""Delivery on a seeded store: the engine bundle, `farm pull`, `farm deliver triton` and the Pareto front."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from typer.testing import CliRunner

from farm.cli import app
from farm.results.delivery import ExportError, engine_bundle, write_engine
from farm.results.select import candidates, pareto_front, winners
from farm.store import Store, open_store
from tests.mounts import tmpfs
from tests.seed import CPU, H200, IMAGENET, L4, TRT_O3, TRT_O5, Seeded, seed

runner = CliRunner()


@pytest.fixture()
def seeded(tmp_path: Path) -> Seeded:
    return seed(tmp_path / "farm-data")


@pytest.fixture()
def store(seeded: Seeded) -> Iterator[Store]:
    opened = open_store(seeded.location, readonly=True)
    yield opened
    opened.close()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_engine_bundle_is_the_engine_and_its_manifest(seeded: Seeded, store: Store) -> None:
    key = seeded.key("resnet50", "fp16", "tensorrt", TRT_O3, H200)
    with zipfile.ZipFile(io.BytesIO(engine_bundle(store, key))) as archive:
        names = sorted(archive.namelist())
        folder = names[0].split("/")[0]
        assert names == [f"{folder}/engine.plan", f"{folder}/manifest.json"]
        engine = archive.read(f"{folder}/engine.plan")
        manifest = json.loads(archive.read(f"{folder}/manifest.json"))
    assert hashlib.sha256(engine).hexdigest() == manifest["engine_sha256"]
    assert store.artifacts.path(manifest["engine_sha256"]).read_bytes() == engine
    assert manifest["target"] == H200 and manifest["compute_capability"] == "9.0"
    assert manifest["backend"] == "tensorrt" and manifest["precision"] == "fp16" and manifest["model"] == "resnet50"
    assert manifest["inputs"][0] == {"name": "input", "shape": ["batch", 3, 224, 224], "dtype": "float32"}
    assert [b["batch_size"] for b in manifest["benchmarks"]] == [1, 8]
    assert manifest["fidelity"]["top1_agreement"] == pytest.approx(0.996)


def test_write_engine_refuses_corrupt_and_missing_artifacts(seeded: Seeded, store: Store, tmp_path: Path) -> None:
    key = seeded.key("resnet50", "int8", "tensorrt", TRT_O3, L4)
    engine, manifest = write_engine(store, key, tmp_path / "ok")
    assert sha256(engine) == json.loads(manifest.read_text())["engine_sha256"]

    artifact = store.artifacts.path(sha256(engine))
    artifact.write_bytes(artifact.read_bytes()[:-1] + b"!")
    with pytest.raises(ExportError, match="corrupt"):
        write_engine(store, key, tmp_path / "corrupt")
    assert not any((tmp_path / "corrupt").glob("*")), "a corrupt engine must leave no file behind"
    artifact.unlink()
    with pytest.raises(ExportError, match="missing"):
        engine_bundle(store, key)
    with pytest.raises(ExportError, match="no engine"):
        engine_bundle(store, seeded.failed_build)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], ("fp16", TRT_O3)),  # lowest p50 (heavy tail)
        (["--objective", "throughput"], ("fp16", TRT_O5)),  # steady: higher mean throughput
        (["--objective", "p99"], ("fp16", TRT_O5)),
        (["--min-top1-agreement", "0.98"], ("int8", TRT_O3)),  # the floor admits int8 (0.985)
    ],
)
def test_pull_writes_the_winner(seeded: Seeded, tmp_path: Path, args: list[str], expected: tuple[str, dict[str, Any]]) -> None:
    out = tmp_path / "pulled"
    result = runner.invoke(app, ["pull", "resnet50", "--target", "NVIDIA H200", "--data-dir", str(seeded.location.data_dir),
                                 "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["build_key"] == seeded.key("resnet50", expected[0], "tensorrt", expected[1], H200)
    assert sha256(out / "engine.plan") == manifest["engine_sha256"]


def test_pull_cpu_target_and_batch(seeded: Seeded, tmp_path: Path) -> None:
    result = runner.invoke(app, ["pull", "mobilenet_v3_large", "--target", "cpu", "--batch", "8", "--data-dir",
                                 str(seeded.location.data_dir), "--out", str(tmp_path / "cpu")])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "cpu" / "manifest.json").read_text())
    assert manifest["target"] == CPU and manifest["backend"] == "onnxruntime"
    # what was delivered is a model ONNX Runtime loads and runs at the batch asked for, with the manifest's tensors
    session = ort.InferenceSession(str(tmp_path / "cpu" / "engine.onnx"), providers=["CPUExecutionProvider"])
    assert [(t.name, t.shape) for t in session.get_inputs()] == [(t["name"], t["shape"]) for t in manifest["inputs"]]
    [scores] = session.run(None, {"input": np.random.default_rng(0).standard_normal((8, 3, 224, 224), dtype=np.float32)})
    assert scores.shape == (8, 1000) and np.isfinite(scores).all()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["resnet50", "--target", "sm_89"], "matches 2 targets"),
        (["resnet50", "--target", "A100"], "no target matching"),
        (["mobilenet_v3_large", "--target", "rtx", "--min-top1-agreement", "0.999"], "reaches top-1 agreement >= 0.999"),
        (["resnet50", "--target", "H200", "--batch", "64"], "not 64"),
        (["nope", "--target", "H200"], "no build of model"),
        (["resnet50", "--target", "H200", "--objective", "fastest"], "--objective"),
    ],
)
def test_pull_errors_are_one_line(seeded: Seeded, tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["pull", *args, "--data-dir", str(seeded.location.data_dir), "--out", str(tmp_path / "x")])
    assert result.exit_code != 0
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "x").exists()


def test_pull_fails_on_a_corrupt_artifact(seeded: Seeded, tmp_path: Path) -> None:
    key = seeded.key("resnet50", "fp16", "tensorrt", TRT_O3, H200)
    store = open_store(seeded.location, readonly=True)
    with store.session() as s:
        sha = next(c.engine_sha256 for c in candidates(s) if c.build_key == key)
    assert sha is not None
    store.artifacts.path(sha).write_bytes(b"truncated")
    result = runner.invoke(app, ["pull", "resnet50", "--target", "H200", "--data-dir", str(seeded.location.data_dir),
                                 "--out", str(tmp_path / "x")])
    assert result.exit_code == 1
    assert "corrupt" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x" / "engine.plan").exists()


def test_pull_without_a_database(tmp_path: Path) -> None:
    result = runner.invoke(app, ["pull", "resnet50", "--target", "H200", "--data-dir", str(tmp_path / "none")])
    assert result.exit_code == 2 and "no results yet" in result.stderr


# --- Triton ----------------------------------------------------------------------------------

DATA_TYPES = ["TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64", "TYPE_INT8", "TYPE_INT16",
              "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32", "TYPE_FP64", "TYPE_STRING", "TYPE_BF16"]


def model_config_class() -> Any:
    """The part of Triton's ModelConfig (model_config.proto) that farm writes, with Triton's field names.

    Parsing with it is strict: an unknown field, a wrong enum name or a malformed map entry fails.
    """
    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="farm_tests_model_config.proto", package="inference", syntax="proto3")
    data_type = proto.enum_type.add(name="DataType")
    for number, name in enumerate(DATA_TYPES):
        data_type.value.add(name=name, number=number)

    def message(name: str, fields: list[tuple[str, int, int, str | None]], parent: Any = None) -> Any:
        found = (parent.nested_type if parent is not None else proto.message_type).add(name=name)
        for field_name, kind, label, type_name in fields:
            found.field.add(name=field_name, number=len(found.field) + 1, type=kind, label=label, type_name=type_name)
        return found

    one, many = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    tensor = [("name", F.TYPE_STRING, one, None), ("data_type", F.TYPE_ENUM, one, ".inference.DataType"), ("dims", F.TYPE_INT64, many, None)]
    message("ModelInput", tensor)
    message("ModelOutput", tensor)
    group = message("ModelInstanceGroup", [("name", F.TYPE_STRING, one, None), ("kind", F.TYPE_ENUM, one, ".inference.ModelInstanceGroup.Kind"),
                                            ("count", F.TYPE_INT32, one, None), ("gpus", F.TYPE_INT32, many, None)])
    kind = group.enum_type.add(name="Kind")
    for number, name in enumerate(["KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"]):
        kind.value.add(name=name, number=number)
    message("ModelDynamicBatching", [("preferred_batch_size", F.TYPE_INT32, many, None),
                                     ("max_queue_delay_microseconds", F.TYPE_UINT64, one, None)])
    policy = message("ModelOptimizationPolicy", [("graph", F.TYPE_MESSAGE, one, ".inference.ModelOptimizationPolicy.Graph")])
    message("Graph", [("level", F.TYPE_INT32, one, None)], parent=policy)
    message("ModelParameter", [("string_value", F.TYPE_STRING, one, None)])
    config = message("ModelConfig", [
        ("name", F.TYPE_STRING, one, None), ("platform", F.TYPE_STRING, one, None), ("backend", F.TYPE_STRING, one, None),
        ("max_batch_size", F.TYPE_INT32, one, None), ("input", F.TYPE_MESSAGE, many, ".inference.ModelInput"),
        ("output", F.TYPE_MESSAGE, many, ".inference.ModelOutput"),
        ("instance_group", F.TYPE_MESSAGE, many, ".inference.ModelInstanceGroup"),
        ("default_model_filename", F.TYPE_STRING, one, None),
        ("cc_model_filenames", F.TYPE_MESSAGE, many, ".inference.ModelConfig.CcModelFilenamesEntry"),
        ("dynamic_batching", F.TYPE_MESSAGE, one, ".inference.ModelDynamicBatching"),
        ("optimization", F.TYPE_MESSAGE, one, ".inference.ModelOptimizationPolicy"),
        ("parameters", F.TYPE_MESSAGE, many, ".inference.ModelConfig.ParametersEntry"),
    ])
    entry = message("CcModelFilenamesEntry", [("key", F.TYPE_STRING, one, None), ("value", F.TYPE_STRING, one, None)], parent=config)
    entry.options.map_entry = True
    parameters = message("ParametersEntry", [("key", F.TYPE_STRING, one, None), ("value", F.TYPE_MESSAGE, one, ".inference.ModelParameter")],
                         parent=config)
    parameters.options.map_entry = True
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


def parse_config(path: Path) -> Any:
    config = model_config_class()()
    text_format.Parse(path.read_text(), config)
    return config


def test_the_config_checker_is_strict() -> None:
    with pytest.raises(text_format.ParseError):
        text_format.Parse('name: "m"\nplatfrom: "tensorrt_plan"\n', model_config_class()())
    with pytest.raises(text_format.ParseError):
        text_format.Parse('input [ { name: "x" data_type: FP32 } ]\n', model_config_class()())


def test_export_triton(seeded: Seeded, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    result = runner.invoke(app, ["deliver", "triton", "--out", str(out), "--data-dir", str(seeded.location.data_dir)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "efficientnet_b0", "efficientnet_b0_onnxruntime", "mobilenet_v3_large", "mobilenet_v3_large_onnxruntime",
        "resnet50", "resnet50_onnxruntime",
    ]
    assert "TensorRT-RTX" in result.stderr  # rtx:sm_89 winners are skipped with a note

    gpu = parse_config(out / "resnet50" / "config.pbtxt")
    assert gpu.name == "resnet50" and gpu.platform == "tensorrt_plan" and gpu.max_batch_size == 32
    assert [(t.name, t.data_type, list(t.dims)) for t in gpu.input] == [("input", DATA_TYPES.index("TYPE_FP32"), [3, 224, 224])]
    assert [(t.name, list(t.dims)) for t in gpu.output] == [("output", [1000])]
    assert [(g.kind, g.count) for g in gpu.instance_group] == [(1, 1)]  # KIND_GPU
    assert dict(gpu.cc_model_filenames) == {"9.0": "model_sm90.plan", "8.9": "model_sm89.plan"}
    assert not gpu.default_model_filename  # no fallback engine for a GPU it was not built for
    expected = {"9.0": seeded.key("resnet50", "fp16", "tensorrt", TRT_O3, H200), "8.9": seeded.key("resnet50", "fp16", "tensorrt", TRT_O3, L4)}
    for cc, file_name in gpu.cc_model_filenames.items():
        manifest = json.loads((out / "resnet50" / "manifests" / f"{file_name}.json").read_text())
        assert manifest["build_key"] == expected[cc]  # sm_89 is the L4's TensorRT engine, not TensorRT-RTX's
        assert sha256(out / "resnet50" / "1" / file_name) == manifest["engine_sha256"]

    assert list(gpu.dynamic_batching.preferred_batch_size) == [8]  # the measured sizes (1, 8) above 1, up to max_batch_size
    assert not gpu.parameters  # a TensorRT plan carries its build options inside

    cpu = parse_config(out / "resnet50_onnxruntime" / "config.pbtxt")
    assert cpu.platform == "onnxruntime_onnx" and cpu.default_model_filename == "model.onnx"
    assert [g.kind for g in cpu.instance_group] == [2]  # KIND_CPU
    assert not cpu.cc_model_filenames
    assert (out / "resnet50_onnxruntime" / "1" / "model.onnx").exists()
    # The options that made the winner win reach Triton's ONNX Runtime session (issue 13)
    assert cpu.parameters["intra_op_thread_count"].string_value == "8"
    assert not cpu.HasField("optimization")  # level "all" is Triton's default
    assert list(cpu.dynamic_batching.preferred_batch_size) == [8] and cpu.max_batch_size == 8
    manifest = json.loads((out / "resnet50_onnxruntime" / "manifests" / "model.onnx.json").read_text())
    assert manifest["preprocess"] == IMAGENET and manifest["weights"] == "DEFAULT" and manifest["random_weights"] is False


def test_triton_config_reproduces_the_graph_optimization_level() -> None:
    from farm.results.delivery.triton import ORT_GRAPH_LEVELS, config_pbtxt

    manifest = {"inputs": [{"name": "input", "shape": ["batch", 3, 8, 8], "dtype": "float32"}],
                "outputs": [{"name": "output", "shape": ["batch", 10], "dtype": "float32"}]}
    for level, number in ORT_GRAPH_LEVELS.items():
        path = Path(f"/tmp/farm-test-{level}.pbtxt")
        path.write_text(config_pbtxt("m", "onnxruntime_onnx", "KIND_CPU", 1, manifest, {"": "model.onnx"},
                                     {"parameters": {"intra_op_thread_count": "1"}, "graph_level": number}, [1]))
        config = parse_config(path)
        assert config.optimization.graph.level == number and not config.HasField("dynamic_batching")  # max batch 1
        path.unlink()


def test_bundles_and_best_json_say_how_to_feed_the_model(seeded: Seeded, store: Store) -> None:
    key = seeded.key("resnet50", "fp16", "tensorrt", TRT_O3, H200)
    with zipfile.ZipFile(io.BytesIO(engine_bundle(store, key))) as archive:
        manifest = json.loads(next(archive.read(n) for n in archive.namelist() if n.endswith("manifest.json")))
    assert (manifest["preprocess"], manifest["weights"], manifest["random_weights"]) == (IMAGENET, "DEFAULT", False)
    best = runner.invoke(app, ["best", "--model", "resnet50", "--json", "--data-dir", str(seeded.location.data_dir)])
    assert best.exit_code == 0, best.output
    first = json.loads(best.stdout)["winners"][0]
    assert {k: first[k] for k in ("preprocess", "weights", "random_weights")} == {"preprocess": IMAGENET, "weights": "DEFAULT",
                                                                                  "random_weights": False}


@pytest.mark.parametrize("name", ["..", ".", "a/b", "x" * 300])
def test_a_name_never_leaves_the_output_folder(tmp_path: Path, name: str) -> None:
    from farm.results.delivery.folders import safe_folder

    (tmp_path / "out").mkdir()
    (tmp_path / "keep").write_text("outside --out")
    with pytest.raises(ExportError, match="cannot be a file or folder name"):
        safe_folder(tmp_path / "out", name)
    assert (tmp_path / "keep").exists()
    assert safe_folder(tmp_path / "out", "resnet50") == tmp_path / "out" / "resnet50"


def test_export_triton_follows_the_objective(seeded: Seeded, tmp_path: Path) -> None:
    """Through `farm export triton`, the first name of `farm deliver triton`: scripts written for it still run."""
    out = tmp_path / "repo"
    result = runner.invoke(app, ["export", "triton", "--out", str(out), "--objective", "throughput",
                                 "--min-top1-agreement", "0.98", "--data-dir", str(seeded.location.data_dir)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "resnet50" / "manifests" / "model_sm90.plan.json").read_text())
    assert manifest["build_key"] == seeded.key("resnet50", "int8", "tensorrt", TRT_O3, H200)


def test_pareto_front(seeded: Seeded, store: Store) -> None:
    with store.session() as s:
        group = [c for c in candidates(s, model="resnet50", target=H200) if c.batch_size == 1]
    front = pareto_front(group, "p50")
    assert [(c.precision, c.backend) for c in front] == [
        ("int8", "tensorrt"), ("fp16", "tensorrt"), ("fp16", "tensorrt"), ("fp32", "tensorrt"), ("fp32", "onnxruntime"),
    ]
    assert all(a.p50 < b.p50 and a.top1_agreement < b.top1_agreement for a, b in zip(front, front[1:]))  # type: ignore[operator]
    dominated = [c for c in group if c not in front]
    assert [c.backend for c in dominated] == ["torch"]  # slower than onnxruntime at the same agreement (1.0)
    assert winners(group, "p50", 0.99)[0].build_key in {c.build_key for c in front}


@pytest.mark.parametrize("command", [["pull", "resnet50", "--target", "H200"], ["deliver", "triton"]])
def test_a_read_only_medium_is_one_line(seeded: Seeded, tmp_path: Path, command: list[str]) -> None:
    """Issue 13, item 11: --out on a read-only medium was a traceback. The medium is real: a read-only tmpfs
    (root ignores permission bits, not a read-only mount)."""
    out = tmp_path / "ro" / "out"
    with tmpfs(tmp_path / "ro", read_only=True):
        result = runner.invoke(app, [*command, "--out", str(out), "--data-dir", str(seeded.location.data_dir)], prog_name="farm")
        assert not out.exists()
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().splitlines() == [f"error: {out}: cannot write (Read-only file system)"]
