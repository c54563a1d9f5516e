"""Which models' inputs changed since the last sweep of a spec, in one line each for `farm sweep`.

A sweep stores, with its spec, each model's `key_inputs` (farm.run.model_inputs: the files and versions
its export key hashed). The next sweep of the same spec name compares its export keys with the
newest earlier sweep's (farm.results.queries.last_exports, a read-only query) and, for a model whose key
differs, names what did: `model tiny: its factory source (mynets/layers.py) changed since the last
sweep: exported again`.
"""

from __future__ import annotations

from typing import Any

from farm.run.jobs import KeyInputs, Plan
from farm.results.queries import last_exports
from farm.run.spec.schema import SweepSpec
from farm.run.stages import ExportJob
from farm.store.record import Recorder

# The spec fields that go into the export key (through ModelRef), as the stored spec names them.
SPEC_FIELDS = ("source", "weights", "input_shape", "opset", "task", "kwargs", "version")


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


def _shown_value(value: Any) -> str:
    return "none" if value is None else str(value)
