"""farm.run.input_changes: the line `farm sweep` prints for a model whose export inputs changed, and the
last export it compares with (on SQLite and PostgreSQL)."""

from __future__ import annotations

from typing import Any

from farm.run.input_changes import change_line
from farm.results.queries import last_exports
from farm.store import Store
from farm.store.record import Recorder

BEFORE: dict[str, Any] = {
    "name": "tiny", "source": "mynets.models:net", "weights": None, "input_shape": [3, 32, 32], "version": None,
    "key_inputs": {"files": {"factory source": {"mynets/models.py": "a" * 64, "mynets/layers.py": "b" * 64}}, "versions": {}},
}


def _with(**changes: Any) -> dict[str, Any]:
    return {**BEFORE, **changes}


def test_the_line_names_each_changed_input() -> None:
    edited = _with(key_inputs={"files": {"factory source": {"mynets/models.py": "a" * 64, "mynets/layers.py": "c" * 64,
                                                          "mynets/blocks.py": "d" * 64}}, "versions": {}})
    assert change_line("tiny", BEFORE, edited, exported_before=False) == (
        "model tiny: its factory source (mynets/blocks.py, mynets/layers.py) changed since the last sweep: exported again")
    bumped = _with(version="2", input_shape=[3, 64, 64])
    assert change_line("tiny", BEFORE, bumped, exported_before=True) == (
        "model tiny: its input_shape ([3, 32, 32] -> [3, 64, 64]) and its version (none -> 2) changed since the last sweep: "
        "an earlier export of these inputs is reused")
    onnx_before = {"key_inputs": {"files": {"ONNX file": {"m.onnx": "a" * 64}},
                                  "versions": {"torchvision": "0.20.0"}}}
    onnx_now = {"key_inputs": {"files": {"ONNX file": {"m.onnx": "a" * 64}, "ONNX external data": {"m.weights": "e" * 64}},
                               "versions": {"torchvision": "0.21.0"}}}
    assert change_line("m", onnx_before, onnx_now, exported_before=False) == (
        "model m: its ONNX external data (m.weights) and its torchvision (0.20.0 -> 0.21.0) changed since the last sweep: exported again")


def test_a_sweep_from_before_source_hashing_is_said_so() -> None:
    old = {k: v for k, v in BEFORE.items() if k != "key_inputs"}
    assert change_line("tiny", old, BEFORE, exported_before=False) == (
        "model tiny: the last sweep was run by a farm that did not hash model sources: exported again")
    assert change_line("tiny", BEFORE, BEFORE, exported_before=False) == (
        "model tiny: its export key changed since the last sweep (a new farm key version): exported again")


def test_the_last_export_of_each_model_is_the_newest_sweep_of_the_same_spec(store: Store) -> None:
    recorder = Recorder(store)
    recorder.start_sweep("s", "s.yaml", {"name": "s", "models": [{"name": "tiny"}, {"name": "big", "version": "1"}]},
                         [("export", "k1", "tiny"), ("reference", "r1", "tiny fp32 reference"), ("export", "k2", "big")])
    recorder.start_sweep("s", "s.yaml", {"name": "s", "models": [BEFORE]}, [("export", "k3", "tiny")])
    recorder.start_sweep("other", "o.yaml", {"name": "other", "models": [{"name": "tiny"}]}, [("export", "k9", "tiny")])
    with store.session() as s:
        found = last_exports(s, "s")
    assert {name: export.key for name, export in found.items()} == {"tiny": "k3", "big": "k2"}
    assert found["tiny"].entry == BEFORE and found["big"].entry == {"name": "big", "version": "1"}
    with store.session() as s:
        assert last_exports(s, "never") == {}
