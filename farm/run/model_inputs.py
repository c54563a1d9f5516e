"""What a model's export depends on beyond its spec's fields, hashed into the export's key so that no
answer comes from an artifact whose inputs changed; and how they differ from the last sweep's.

- a factory (`package.module:function`): the sha256 of its module file and of every file of its own
  package it imports (workers.sources finds them without importing anything);
- a torchvision network: torchvision's version (its weights choice is a spec field);
- an ONNX file: its bytes and the external-data files it names;
- any model: the spec's `version:`, for what no file shows.

Every downstream key (reference, calibrate, variant, build, benchmark, fidelity) hashes its parents'
keys, so all of them follow. Hashing reads files and package metadata only: the driver never imports
torch. farm.run.input_changes says, after a sweep of the same spec, what differs.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from farm.run.jobs import KeyInputs
from farm.run.spec.schema import ModelSpec
from workers.models import external_data_files
from workers.sources import FactoryNotFound, factory_source, file_sha256, search_path
from workers.structs import ModelRef

FACTORY = "factory source"
ONNX_FILE = "ONNX file"
EXTERNAL_DATA = "ONNX external data"


def key_inputs(model: ModelSpec, ref: ModelRef, base: Path, search: Sequence[str]) -> KeyInputs:
    files: dict[str, dict[str, str]] = {}
    versions: dict[str, str] = {}
    if ref.kind == "factory":
        try:
            source = factory_source(ref.source.partition(":")[0], search)
            files[FACTORY] = {source.shown(path): file_sha256(path) for path in source.files}
        except FactoryNotFound:
            files[FACTORY] = {}  # the driver cannot see it (farm.run.spec.check_inputs refuses this before a sweep)
    elif ref.kind == "torchvision":
        versions["torchvision"] = _installed("torchvision")
    else:
        path = Path(ref.source)
        files[ONNX_FILE] = {_shown(path, base): _sha256_or_missing(path)}
        external = external_data_files(path) if path.is_file() else []
        if external:
            files[EXTERNAL_DATA] = {_shown(p, base): _sha256_or_missing(p) for p in external}
    if model.version is not None:
        versions["version"] = model.version
    return KeyInputs(files, versions)


def _installed(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _sha256_or_missing(path: Path) -> str:
    return file_sha256(path) if path.is_file() else "missing"


def _shown(path: Path, base: Path) -> str:
    resolved, folder = path.resolve(), base.resolve()
    return resolved.relative_to(folder).as_posix() if resolved.is_relative_to(folder) else str(resolved)
