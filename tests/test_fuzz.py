"""Fuzzing the readers of untrusted input (hypothesis, bounded by max_examples and a deadline):

- the spec loader: any bytes, any YAML text, any YAML value, any change to a valid spec gives a
  valid spec or a SpecError whose str is one line naming the file, never another exception;
- the manifest readers: workers.structs.Manifest.from_json gives a Manifest or a ManifestError, and
  farm.results.delivery's reading of a stored manifest (max_batch_size, config_pbtxt, runtime_options,
  engine_file, bundle_manifest) gives its answer or an ExportError.
"""

from __future__ import annotations

import copy
import itertools
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farm.results.delivery import ExportError, StoredEngine, bundle_manifest, config_pbtxt, max_batch_size, runtime_options
from farm.run.spec import SpecError, SweepSpec, load_spec
from farm.run.spec.loading import MAX_ERRORS
from workers.structs import Manifest, ManifestError, TensorSpec

BOUNDED = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow], database=None)

VALID: dict[str, Any] = {
    "name": "fuzz",
    "models": [{"name": "a", "source": "torchvision:resnet18", "weights": None, "input_shape": [3, 32, 32],
                "preprocess": {"resize": 36, "crop": 32}}],
    "batch_sizes": [1, 8],
    "backends": {"onnxruntime": {"intra_op_threads": [1, 2]}, "torch": {"kind": "eager"}},
    "precisions": ["fp32", "int8"],
    "benchmark": {"warmup_s": 0.1, "duration_s": 0.5},
    "calibration": {"samples": 8, "methods": ["minmax"]},
    "fidelity": {"samples": 8, "min_top1_agreement": 0.9},
    "limits": {"retries": 1},
}

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10**40), max_value=10**40)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                      max_leaves=25)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


_names = itertools.count()


def _loads_or_one_line_each(folder: Path, content: bytes) -> SweepSpec | None:
    path = folder / f"spec-{next(_names)}.yaml"
    path.write_bytes(content)
    try:
        spec, _base = load_spec(path)
    except SpecError as exc:
        # one line per problem (a spec's independent field errors come all at once), each naming the file
        lines = str(exc).split("\n")
        assert 1 <= len(lines) <= MAX_ERRORS + 1, lines
        for line in lines:
            assert line.startswith(f"{path}"), line
            assert "\r" not in line and len(line) <= 2000, line
        return None
    finally:
        path.unlink()
    assert isinstance(spec, SweepSpec)
    return spec


@BOUNDED
@given(st.binary(max_size=3000))
def test_any_bytes(folder: Path, content: bytes) -> None:
    _loads_or_one_line_each(folder, content)


@BOUNDED
@given(st.text(max_size=400))
def test_any_text(folder: Path, text: str) -> None:
    _loads_or_one_line_each(folder, text.encode("utf-8", "surrogatepass"))


@BOUNDED
@given(values)
def test_any_yaml_value(folder: Path, value: Any) -> None:
    _loads_or_one_line_each(folder, yaml.safe_dump(value, allow_unicode=True).encode())


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found += _paths(value, (*prefix, index))
    return found


@BOUNDED
@given(st.data())
def test_any_change_to_a_valid_spec(folder: Path, data: st.DataObject) -> None:
    spec = copy.deepcopy(VALID)
    path = data.draw(st.sampled_from(_paths(spec)[1:]))
    parent = spec
    for step in path[:-1]:
        parent = parent[step]
    if data.draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(values)
    _loads_or_one_line_each(folder, yaml.safe_dump(spec, allow_unicode=True).encode())


def test_the_valid_spec_is_valid(folder: Path) -> None:
    assert _loads_or_one_line_each(folder, yaml.safe_dump(VALID).encode()) is not None


# --- manifests ----------------------------------------------------------------------------------

GOOD_MANIFEST = Manifest("onnxruntime", "1.22", "cpu:x", "fp32", {"intra_op_threads": 2}, [TensorSpec("input", ("batch", 3, 8, 8), "float32")],
                         [TensorSpec("output", ("batch", 10), "float32")], "m", "ab" * 32, "cd" * 32,
                         {"profile": {"input": [1, 4, 8]}}).to_json()


def _mutated(data: st.DataObject) -> Any:
    if data.draw(st.booleans()):
        return data.draw(values)
    manifest = copy.deepcopy(GOOD_MANIFEST)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(manifest)[1:]))
        parent = manifest
        for step in path[:-1]:
            parent = parent[step]
        parent[path[-1]] = data.draw(values)
    return manifest


@BOUNDED
@given(st.data())
def test_manifest_from_json(data: st.DataObject) -> None:
    found = _mutated(data)
    try:
        manifest = Manifest.from_json(found)
    except ManifestError as exc:
        assert "\n" not in str(exc)
        return
    assert Manifest.from_json(manifest.to_json()) == manifest


def _stored(manifest: Any, options: Any) -> StoredEngine:
    return StoredEngine(key="k" * 32, label="m onnxruntime", status="ok", error=None, log=None, model="m", precision="fp32",
                        backend="onnxruntime", backend_version="1.22", target="cpu:x", target_kind="cpu",
                        options=options if isinstance(options, dict) else {}, manifest=manifest, engine_sha256="cd" * 32,
                        engine_bytes=10, seconds=1.0, node="n", created_at=datetime.now(UTC), batch_sizes=(1, 8))


@BOUNDED
@given(st.data())
def test_delivery_reads_any_stored_manifest(data: st.DataObject) -> None:
    record = _stored(_mutated(data), data.draw(values | st.just({"intra_op_threads": 4, "graph_optimization_level": "basic"})))
    batch = max_batch_size(record)
    assert isinstance(batch, int) and batch >= 1
    assert "/" not in record.engine_file and record.engine_file not in (".", "..")
    options = runtime_options(record)
    bundle_manifest(record)
    try:
        text = config_pbtxt("m", "onnxruntime_onnx", "KIND_CPU", batch, record.engine_manifest, {"": "model.onnx"}, options, [1, 8])
    except ExportError as exc:
        assert "\n" not in str(exc)
        return
    assert text.startswith('name: "m"')
