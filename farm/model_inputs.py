"""What a model's export depends on beyond its spec's fields, hashed into the export's key so that no
answer comes from an artifact whose inputs changed; and how they differ from the last sweep's.

- a factory (`package.module:function`): the sha256 of its module file and of every file of its own
  package it imports (workers.sources finds them without importing anything);
- a torchvision network: torchvision's version (its weights choice is a spec field);
- an ONNX file: its bytes and the external-data files it names;
- any model: the spec's `version:`, for what no file shows.

Every downstream key (reference, calibrate, variant, build, benchmark, fidelity) hashes its parents'
keys, so all of them follow. Hashing reads files and package metadata only: the driver never imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from farm.jobs import ExportJob, KeyInputs, Plan
from farm.queries import last_exports
from farm.spec import ModelSpec, SweepSpec
from farm.store.record import Recorder
from workers.models import external_data_files
from workers.sources import FactoryNotFound, factory_source, file_sha256, search_path
from workers.structs import ModelRef

FACTORY = "factory source"
ONNX_FILE = "ONNX file"
EXTERNAL_DATA = "ONNX external data"
# The spec fields that go into the export key (through ModelRef), as the stored spec names them.
SPEC_FIELDS = ("source", "weights", "input_shape", "opset", "task", "kwargs", "version")


def key_inputs(model: ModelSpec, ref: ModelRef, base: Path, search: Sequence[str]) -> KeyInputs:
    files: dict[str, dict[str, str]] = {}
    versions: dict[str, str] = {}
    if ref.kind == "factory":
        try:
            source = factory_source(ref.source.partition(":")[0], search)
            files[FACTORY] = {source.shown(path): file_sha256(path) for path in source.files}
        except FactoryNotFound:
            files[FACTORY] = {}  # the driver cannot see it (farm.spec.check_inputs refuses this before a sweep)
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


def recorded_spec(spec: SweepSpec, plan: Plan) -> dict[str, Any]:
    """The spec as a sweep row stores it, each model with the `key_inputs` its export key hashed:
    what the next sweep compares with (`input_changes`)."""
    recorded = spec.model_dump(mode="json")
    inputs = {job.model.name: job.inputs for job in plan.jobs if isinstance(job, ExportJob)}
    for entry in recorded["models"]:
        if entry["name"] in inputs:
            entry["key_inputs"] = inputs[entry["name"]].to_json()
    return recorded


def input_changes(recorder: Recorder, spec_name: str, plan: Plan, recorded: dict[str, Any]) -> list[str]:
    """One line per model whose export key differs from the newest earlier sweep of this spec, saying
    what changed: the answer about to be given is not the one given last time."""
    with recorder.store.session() as s:
        before = last_exports(s, spec_name)
    entries = {entry["name"]: entry for entry in recorded["models"]}
    lines = []
    for job in plan.jobs:
        if not isinstance(job, ExportJob) or job.model.name not in before or before[job.model.name].key == job.key:
            continue
        lines.append(change_line(job.model.name, before[job.model.name].entry, entries.get(job.model.name, {}),
                                 recorder.finished("export", job.key) is not None))
    return lines


def what_changed(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Phrases naming what differs between two stored model entries (the spec's model, with its
    `key_inputs`): `factory source (pkg/net.py)`, `version (1 -> 2)`. Empty when nothing recorded differs."""
    found = [f"{name} ({_shown_value(before.get(name))} -> {_shown_value(now.get(name))})"
             for name in SPEC_FIELDS if before.get(name) != now.get(name)]
    old, new = KeyInputs.from_json(before.get("key_inputs")), KeyInputs.from_json(now.get("key_inputs"))
    if old is None or new is None:
        return found
    for kind in sorted(old.files.keys() | new.files.keys()):
        was, is_ = old.files.get(kind, {}), new.files.get(kind, {})
        paths = sorted(p for p in was.keys() | is_.keys() if was.get(p) != is_.get(p))
        if paths:
            found.append(f"{kind} ({', '.join(paths)})")
    found += [f"{name} ({old.versions.get(name, 'none')} -> {new.versions.get(name, 'none')})"
              for name in sorted(old.versions.keys() | new.versions.keys())
              if name not in SPEC_FIELDS and old.versions.get(name) != new.versions.get(name)]
    return found


def change_line(model: str, before: dict[str, Any], now: dict[str, Any], exported_before: bool) -> str:
    """`model tiny: its factory source (tests/models.py) changed since the last sweep: exported again`."""
    phrases = what_changed(before, now)
    outcome = "an earlier export of these inputs is reused" if exported_before else "exported again"
    if phrases:
        return f"model {model}: its {' and its '.join(phrases)} changed since the last sweep: {outcome}"
    if KeyInputs.from_json(before.get("key_inputs")) is None:
        return f"model {model}: the last sweep was run by a farm that did not hash model sources: {outcome}"
    return f"model {model}: its export key changed since the last sweep (a new farm key version): {outcome}"


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


def _shown_value(value: Any) -> str:
    return "none" if value is None else str(value)
