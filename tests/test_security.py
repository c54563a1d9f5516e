"""docs/security.md, one test per promise: model and data files are untrusted input, names stay inside
output folders, the dashboard is read-only on loopback and says so when it is not."""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from farm.cli import app
from tests.conftest import REPO, write_spec
from workers.models import MAX_ONNX_BYTES, ModelSourceError, export, onnx_file_problem
from workers.structs import ModelRef

SOURCES = [p for folder in ("farm", "workers", "dashboard", "benchmarks") for p in sorted((REPO / folder).rglob("*.py"))]


def _calls(name: str) -> list[tuple[Path, ast.Call]]:
    """Every call of `<something>.name(...)` in farm, workers, dashboard and benchmarks."""
    found = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == name:
                found.append((path, node))
    return found


def _keyword(call: ast.Call, name: str) -> Any:
    value = next((k.value for k in call.keywords if k.arg == name), None)
    return value.value if isinstance(value, ast.Constant) else ("<expression>" if value is not None else None)


def test_torch_load_never_unpickles() -> None:
    """A checkpoint is data: torch.load(..., weights_only=True) everywhere, so a crafted file cannot run code."""
    loads = [(p, c) for p, c in _calls("load") if isinstance(c.func, ast.Attribute) and isinstance(c.func.value, ast.Name)
             and c.func.value.id == "torch"]
    assert loads, "the check must see the checkpoint loads"
    assert [f"{p.relative_to(REPO)}:{c.lineno}" for p, c in loads if _keyword(c, "weights_only") is not True] == []


def test_numpy_and_pickle() -> None:
    """np.load keeps allow_pickle at its default (False); nothing imports pickle to read a file."""
    assert [f"{p.relative_to(REPO)}:{c.lineno}" for p, c in _calls("load") if _keyword(c, "allow_pickle") not in (None, False)] == []
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        modules |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not {"pickle", "cPickle", "dill", "cloudpickle"} & modules, path


def _external(path: Path, location: str, data: np.ndarray | None = None) -> None:
    weight = numpy_helper.from_array(np.ones(4, np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph([helper.make_node("Add", ["input", "w"], ["output"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4])], [weight])
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    if data is not None:
        (path.parent / location).write_bytes(data.astype(np.float32).tobytes())


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "a/../../secret.bin", "C:\\\\secret.bin"])
def test_external_data_outside_the_models_folder_is_refused(tmp_path: Path, location: str) -> None:
    """The export stage (on a worker) refuses it too, not only farm's check before Ray."""
    (tmp_path / "models").mkdir()
    _external(tmp_path / "models" / "m.onnx", location)
    with pytest.raises(ModelSourceError, match=r"keeps its data at .*, outside the model's folder: refused"):
        export(ModelRef("m", str(tmp_path / "models" / "m.onnx"), None, (4,)))


def test_external_data_beside_the_model_is_read_into_one_file(tmp_path: Path) -> None:
    _external(tmp_path / "m.onnx", "m.weights", np.arange(4))
    exported = export(ModelRef("m", str(tmp_path / "m.onnx"), None, (4,)))
    proto = onnx.load_from_string(exported.onnx_bytes)
    assert proto.graph.initializer[0].data_location == TensorProto.DEFAULT  # self-contained: the store keeps one file
    assert numpy_helper.to_array(proto.graph.initializer[0]).tolist() == [0.0, 1.0, 2.0, 3.0]


def test_model_files_are_bounded(tmp_path: Path) -> None:
    big = tmp_path / "big.onnx"
    with big.open("wb") as handle:  # sparse: no disk used
        handle.truncate(MAX_ONNX_BYTES + 1)
    assert onnx_file_problem(big) == f"{big} is 2.0 GiB, over the 2 GiB one ONNX protobuf can hold"
    assert onnx_file_problem(tmp_path) == f"{tmp_path} is a directory, not an .onnx file"


def test_names_cannot_escape_output_folders(tmp_path: Path) -> None:
    """Spec names become folders: '..' is refused by the spec (and by delivery, for stores written before)."""
    from farm.results.delivery import ExportError, safe_folder
    from farm.run.spec import SpecError, load_spec

    spec = write_spec(tmp_path, "name: t\nmodels: [{name: '..', source: 'torchvision:resnet18', weights: null}]\nbackends: {torch: {}}\n")
    with pytest.raises(SpecError, match=r"models\[0\]\.name: '\.\.' cannot be a name"):
        load_spec(spec)
    with pytest.raises(ExportError):
        safe_folder(tmp_path, "..")


@pytest.mark.parametrize(("host", "warned"), [("127.0.0.1", False), ("localhost", False), ("0.0.0.0", True), ("10.1.2.3", True)])
def test_the_dashboard_warns_when_it_leaves_loopback(host: str, warned: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[list[str]] = []
    monkeypatch.setattr(os, "execvpe", lambda file, args, env: started.append(list(args)))
    result = CliRunner().invoke(app, ["dashboard", "--host", host, "--data-dir", str(tmp_path)], prog_name="farm")
    assert result.exit_code == 0, result.output
    assert f"--server.address={host}" in started[0]
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("farm dashboard on http://")
    assert (len(lines) == 2 and lines[0].startswith(f"warning: --host {host}: the dashboard has no authentication")) is warned
    assert warned or len(lines) == 1


def test_the_dashboard_opens_the_store_read_only() -> None:
    """It reads through a read-only SQLite URI (tests/test_store.py::test_readonly_store_cannot_write proves the mode)."""
    source = (REPO / "dashboard" / "data.py").read_text()
    assert "open_store(StoreLocation(Path(data_dir), url), readonly=True)" in source


def test_the_security_doc_names_what_it_promises() -> None:
    text = (REPO / "docs" / "security.md").read_text()
    for promise in ("weights_only=True", "external data", "factory", "loopback", "RAY_AUTH_TOKEN", "memory_gib", "..", "read-only"):
        assert promise in text, promise
