"""Keys that cannot go stale, end to end: `farm sweep` (a real process, its own local Ray, a SQLite
store) runs a factory written into a project folder, then again after the factory's package is
edited, then after the spec's `version:` is bumped. Each time the model is exported again, its
engines are built again under new keys, and the output names the model and what changed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from farm.store import StoreLocation, open_store, schema
from tests.conftest import CALIBRATION_DATA, REPO, write_spec

pytestmark = pytest.mark.slow

SPEC = f"""
name: fresh
models:
  - {{name: tiny, source: "mynets.models:net", weights: null, input_shape: [3, 32, 32]}}
batch_sizes: [1]
backends:
  onnxruntime: {{intra_op_threads: 1}}
benchmark: {{warmup_s: 0.0, duration_s: 0.1, min_iterations: 3, window_s: 0.05, max_duration_s: 0.3}}
fidelity: {{data: {CALIBRATION_DATA}, samples: 4}}
"""

MODELS = """
from torch import nn

from .layers import head


def net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), head(16))
"""

LAYERS = """
from torch import nn


def head(features: int) -> nn.Module:
    return nn.Linear(features, 10)
"""

# The edit a user makes to a helper the factory imports: one more layer, so the exported graph differs.
LAYERS_EDITED = LAYERS.replace("return nn.Linear(features, 10)", "return nn.Sequential(nn.Linear(features, 10), nn.Softmax(dim=1))")


def _sweep(project: Path, data: Path) -> subprocess.CompletedProcess[str]:
    """`farm sweep` from the project folder, as a user runs it: the factory is found there, by the
    driver and by Ray's workers (Ray puts the driver's folder on their path)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "farm.cli", "sweep", "spec.yaml", "--data-dir", str(data)],
                          cwd=project, env=env, capture_output=True, text=True, timeout=600)


def _exports_and_builds(data: Path) -> tuple[list[tuple[str, str, int]], list[tuple[str, str, str]]]:
    """(key, status, node count) of each export and (key, status, its export's key) of each build, oldest first."""
    store = open_store(StoreLocation.resolve(data))
    try:
        with store.session() as s:
            models = s.execute(select(schema.Model.key, schema.Model.status, schema.Model.node_count).order_by(schema.Model.created_at))
            builds = s.execute(select(schema.Build.key, schema.Build.status, schema.Variant.model_key)
                               .join(schema.Variant, schema.Variant.key == schema.Build.variant_key).order_by(schema.Build.created_at))
            return [tuple(m) for m in models], [tuple(b) for b in builds]
    finally:
        store.close()


def test_an_edited_factory_is_exported_and_built_again(tmp_path: Path) -> None:
    package = tmp_path / "mynets"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(MODELS)
    (package / "layers.py").write_text(LAYERS)
    write_spec(tmp_path, SPEC)
    data = tmp_path / "farm-data"

    first = _sweep(tmp_path, data)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "changed" not in first.stdout  # nothing to compare with yet
    again = _sweep(tmp_path, data)  # nothing edited: the same keys, every job answered from the store
    progress = [line for line in again.stdout.splitlines() if line.startswith(("export ", "build "))]
    assert again.returncode == 0 and "changed" not in again.stdout
    assert len(progress) == 2 and all("1 cached" in line for line in progress), again.stdout

    (package / "layers.py").write_text(LAYERS_EDITED)
    edited = _sweep(tmp_path, data)
    assert edited.returncode == 0, edited.stdout + edited.stderr
    assert "model tiny: its factory source (mynets/layers.py) changed since the last sweep: exported again" in edited.stdout
    assert "cached" not in edited.stdout.split("Winners")[0]  # not one job answered from the first run's rows

    write_spec(tmp_path, SPEC.replace("[3, 32, 32]}", "[3, 32, 32], version: 2}"))
    bumped = _sweep(tmp_path, data)
    assert bumped.returncode == 0, bumped.stdout + bumped.stderr
    assert "model tiny: its version (none -> 2) changed since the last sweep: exported again" in bumped.stdout

    models, builds = _exports_and_builds(data)
    assert [status for _key, status, _nodes in models] == ["ok"] * 3 and len({key for key, _, _ in models}) == 3
    # the edit reached the export: the second graph has the softmax the first lacks (the first run's
    # ONNX, or a worker's old import of the module, would not)
    nodes = [count for _key, _status, count in models]
    assert nodes[1] == nodes[0] + 1 and nodes[2] == nodes[1]
    assert [status for _key, status, _model in builds] == ["ok"] * 3 and len({key for key, _, _ in builds}) == 3
    assert [model for _key, _status, model in builds] == [key for key, _, _ in models]  # each engine from its own export
