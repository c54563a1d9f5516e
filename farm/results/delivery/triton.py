"""A Triton model repository of the winners: per model a folder with 1/<engine files>, their manifests
and a config.pbtxt written from the engine's manifest (tensors, batch profile, runtime options)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from farm.results.delivery.engines import StoredEngine, bundle_manifest, compute_capability, load_engine
from farm.results.delivery.errors import ExportError, writing
from farm.results.delivery.folders import plain_name, prepared_out, removed_on_failure, safe_folder, staged
from farm.results.delivery.picking import default_batch
from farm.results.delivery.streaming import write_verified
from farm.results.labels import short_key
from farm.results.rows import targets_by_id
from farm.results.select import Candidate, Objective, candidates, winners
from farm.store import Store, schema


TRITON_DTYPES = {
    "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64", "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32",
    "int64": "TYPE_INT64", "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
    "bfloat16": "TYPE_BF16", "string": "TYPE_STRING",
}
# ONNX Runtime's graph_optimization_level as Triton's onnxruntime backend spells it (optimization.graph.level):
# -1 basic, 1 extended, 2 disabled; "all" is its default and is left out.
ORT_GRAPH_LEVELS = {"disable": 2, "basic": -1, "extended": 1}


@dataclass(frozen=True)
class TritonModel:
    name: str
    platform: str
    kind: str  # KIND_GPU | KIND_CPU
    max_batch_size: int
    files: dict[str, str]  # compute capability ("9.0") -> file name in 1/; "" for the default file
    builds: dict[str, str]  # file name -> build label
    config: str


@dataclass
class TritonRepository:
    root: Path
    models: list[TritonModel] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def triton_repository(
    store: Store,
    out_dir: Path,
    *,
    objective: Objective = "p50",
    min_top1_agreement: float = 0.99,
    batch_size: int | None = None,
) -> TritonRepository:
    """Write a Triton model repository of the winners.

    `<model>/`: tensorrt_plan, the fastest eligible TensorRT engine of every GPU target,
    selected per GPU by `cc_model_filenames`. `<model>_onnxruntime/`: onnxruntime_onnx, the
    fastest eligible ONNX Runtime build of the CPU target. One Triton model has one platform,
    so a GPU target whose overall winner is another backend gets its best TensorRT engine and
    a note; TensorRT-RTX (`rtx:`) engines need the TensorRT-RTX runtime, which Triton's
    TensorRT backend is not, so they are skipped with a note.
    """
    repo = TritonRepository(out_dir)
    with store.session() as s:
        found = candidates(s)
        targets = targets_by_id(s)
    if not found:
        raise ExportError("no benchmarked builds: run `farm sweep SPEC` first", 3)
    with removed_on_failure(out_dir):
        prepared_out(out_dir)
        for model in sorted({c.model for c in found}):
            mine = [c for c in found if c.model == model]
            try:
                safe_folder(out_dir, model, row=f"build {short_key(mine[0].build_key)}")
            except ExportError as exc:
                repo.notes.append(f"{str(exc)} (skipped)")
                continue
            chosen = _choose(mine, targets, objective, min_top1_agreement, batch_size, repo.notes)
            gpu = {t: c for t, c in chosen.items() if targets[t].kind == "gpu" and c.backend == "tensorrt"}
            cpu = {t: c for t, c in chosen.items() if targets[t].kind == "cpu" and c.backend == "onnxruntime"}
            if gpu and (written := _write_gpu_model(store, out_dir, model, gpu, targets, repo.notes)):
                repo.models.append(written)
            if cpu:
                repo.models.append(_write_cpu_model(store, out_dir, f"{model}_onnxruntime", cpu, repo.notes))
            if not gpu and not cpu:
                repo.notes.append(f"{model}: no eligible TensorRT (GPU) or ONNX Runtime (CPU) build; nothing written")
    return repo


def _choose(
    mine: list[Candidate],
    targets: dict[str, schema.Target],
    objective: Objective,
    floor: float,
    batch_size: int | None,
    notes: list[str],
) -> dict[str, Candidate]:
    """Per target: the eligible winner among the backends Triton can serve there."""
    chosen: dict[str, Candidate] = {}
    for target_id in sorted({c.target for c in mine}):
        kind = targets[target_id].kind
        here = [c for c in mine if c.target == target_id]
        model = here[0].model
        if kind == "rtx":
            notes.append(f"{model} @ {target_id}: TensorRT-RTX engines need the TensorRT-RTX runtime; Triton's tensorrt backend cannot load them (skipped)")
            continue
        sizes = sorted({c.batch_size for c in here})
        batch = default_batch(sizes, objective) if batch_size is None else batch_size
        at_batch = [c for c in here if c.batch_size == batch]
        if not at_batch:
            notes.append(f"{model} @ {target_id}: not benchmarked at batch {batch} (skipped)")
            continue
        served = "tensorrt" if kind == "gpu" else "onnxruntime"
        overall = winners(at_batch, objective, floor)
        best = winners([c for c in at_batch if c.backend == served], objective, floor)
        if overall and overall[0].backend == "torch":
            notes.append(f"{model} @ {target_id}: the winner is a PyTorch engine ({overall[0].engine}), which a Triton model "
                         f"repository of TensorRT and ONNX Runtime engines cannot hold: `farm pull {model} --target '{target_id}'` "
                         "hands it out with how to load it (an AOTInductor .pt2 loads with torch._inductor.aoti_load_package, "
                         "for instance in Triton's python backend)")
        if not best:
            notes.append(f"{model} @ {target_id}: no {served} build reaches top-1 agreement {floor} (skipped)")
            continue
        if overall and overall[0].backend not in (served, "torch"):
            notes.append(f"{model} @ {target_id}: the overall winner is {overall[0].backend}; Triton gets the best {served} build ({best[0].label})")
        chosen[target_id] = best[0]
    return chosen


def _write_gpu_model(
    store: Store, out_dir: Path, name: str, chosen: dict[str, Candidate], targets: dict[str, schema.Target], notes: list[str]
) -> TritonModel | None:
    by_cc: dict[str, Candidate] = {}
    files: dict[str, str] = {}
    for target_id, c in sorted(chosen.items()):
        cc = compute_capability(targets[target_id])
        if cc is None:
            notes.append(f"{name} @ {target_id}: unknown compute capability (skipped)")
        elif cc in by_cc:
            notes.append(f"{name}: {target_id} and {by_cc[cc].target} share compute capability {cc}; Triton picks by capability, so {by_cc[cc].target} is used")
        else:
            try:  # the capability is a stored name too (targets.compute_capability), and names a file in 1/
                files[cc] = plain_name(f"model_sm{cc.replace('.', '')}.plan", "compute capability", f"target {target_id}")
            except ExportError as exc:
                notes.append(f"{exc} (skipped)")
                continue
            by_cc[cc] = c
    if not by_cc:
        return None
    return _write_model(store, out_dir, name, "tensorrt_plan", "KIND_GPU", {files[cc]: c for cc, c in by_cc.items()}, files, notes)


def _write_cpu_model(store: Store, out_dir: Path, name: str, chosen: dict[str, Candidate], notes: list[str]) -> TritonModel:
    target_id = sorted(chosen)[0]
    if len(chosen) > 1:
        notes.append(f"{name}: {len(chosen)} CPU targets; the winner of {target_id} is used")
    return _write_model(store, out_dir, name, "onnxruntime_onnx", "KIND_CPU", {"model.onnx": chosen[target_id]}, {"": "model.onnx"}, notes)


def _write_model(
    store: Store,
    out_dir: Path,
    name: str,
    platform: str,
    kind: str,
    by_file: dict[str, Candidate],
    files: dict[str, str],
    notes: list[str],
) -> TritonModel:
    model_dir = safe_folder(out_dir, name, row=f"build {short_key(next(iter(by_file.values())).build_key)}")
    records = {}
    with store.session() as s:
        for file_name, c in by_file.items():
            records[file_name] = load_engine(s, c.build_key)
    first = records[sorted(records)[0]]
    signatures = {json.dumps([r.engine_manifest.get("inputs"), r.engine_manifest.get("outputs")], sort_keys=True) for r in records.values()}
    if len(signatures) > 1:
        notes.append(f"{name}: the engines' inputs/outputs differ; config.pbtxt follows {first.label}")
    max_batch = min(max_batch_size(r) for r in records.values())
    timed = sorted({b for r in records.values() for b in r.batch_sizes})
    config = config_pbtxt(name, platform, kind, max_batch, first.engine_manifest, files,
                          options=runtime_options(first), batch_sizes=timed)
    # Written beside the model's folder and renamed over it once every engine checked out: a corrupt one
    # leaves the folder as it was (or absent), never emptied or half-written.
    with writing(model_dir), staged(model_dir) as stage:
        for file_name, record in records.items():
            write_verified(store, record.sha256, stage / "1" / file_name)
            # Non-numeric folders are not versions to Triton, so the manifests can live beside 1/.
            manifest_path = stage / "manifests" / f"{file_name}.json"
            manifest_path.parent.mkdir(parents=True, exist_ok=True)
            manifest_path.write_text(json.dumps(bundle_manifest(record), indent=2) + "\n")
        (stage / "config.pbtxt").write_text(config)
    return TritonModel(name, platform, kind, max_batch, files, {f: r.label for f, r in records.items()}, config)


def runtime_options(record: StoredEngine) -> dict[str, Any]:
    """The options of the winning build that the serving runtime must be told again (an ONNX Runtime
    session's threads and graph optimization level live in the session, not in the .onnx file):
    {"parameters": {key: value}, "graph_level": int | None}. TensorRT plans carry theirs inside."""
    if record.backend != "onnxruntime":
        return {}
    level = str(record.extra.get("graph_optimization_level_used") or record.options.get("graph_optimization_level", "all"))
    parameters = {}
    threads = record.options.get("intra_op_threads")
    if isinstance(threads, int) and not isinstance(threads, bool):
        parameters["intra_op_thread_count"] = str(threads)
    return {"parameters": parameters, "graph_level": ORT_GRAPH_LEVELS.get(level)}


def max_batch_size(record: StoredEngine) -> int:
    """The engine's batch profile maximum, else a static batch dimension, else its largest benchmarked batch.

    TensorRT manifests carry the profile as extra "profile": {input name: [min, opt, max] batch}.
    """
    profile = record.extra.get("profile")
    maxima = [shape[2] for shape in (profile.values() if isinstance(profile, dict) else ())
              if isinstance(shape, list) and len(shape) == 3 and _count(shape[2])]
    if maxima:
        return min(maxima)
    inputs = record.engine_manifest.get("inputs")
    first = inputs[0] if isinstance(inputs, list) and inputs and isinstance(inputs[0], dict) else {}
    shape = first.get("shape")
    if isinstance(shape, list) and shape and _count(shape[0]):
        return int(shape[0])
    return max(record.batch_sizes, default=1)


def _count(value: Any) -> bool:
    """A positive int that is not a bool: what a batch dimension read from a manifest must be."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def manifest_tensors(manifest: dict[str, Any], section: str) -> list[tuple[str, list[int | str], str]]:
    """(name, shape, dtype) of the manifest's "inputs" or "outputs", or ExportError (one line) where the
    manifest does not describe them: manifests come from stores and bundles, and are read as untrusted."""
    found = manifest.get(section)
    if not isinstance(found, list) or not found:
        raise ExportError(f"the engine's manifest does not describe its {section}")
    tensors = []
    for i, tensor in enumerate(found):
        shape = tensor.get("shape") if isinstance(tensor, dict) else None
        if (not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str) or not isinstance(tensor.get("dtype"), str)
                or not isinstance(shape, list) or not all(isinstance(d, int | str) and not isinstance(d, bool) for d in shape)):
            raise ExportError(f"manifest {section}[{i}]: expected {{name, shape, dtype}}")
        tensors.append((tensor["name"], shape, tensor["dtype"]))
    return tensors


def _tensors(section: str, tensors: list[tuple[str, list[int | str], str]]) -> list[str]:
    lines = [f"{section} ["]
    for i, (name, shape, dtype_name) in enumerate(tensors):
        dims = ", ".join(str(d) if isinstance(d, int) else "-1" for d in shape[1:])
        dtype = TRITON_DTYPES.get(dtype_name)
        if dtype is None:
            raise ExportError(f"tensor {name}: no Triton data type for {dtype_name}")
        lines += ["  {", f"    name: {_quote(name)}", f"    data_type: {dtype}", f"    dims: [ {dims} ]",
                  "  }" + ("," if i < len(tensors) - 1 else "")]
    return lines + ["]"]


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def config_pbtxt(name: str, platform: str, kind: str, max_batch: int, manifest: dict[str, Any], files: dict[str, str],
                 options: dict[str, Any] | None = None, batch_sizes: list[int] | None = None) -> str:
    """Triton's ModelConfig in protobuf text format; dims leave out the batch axis (max_batch_size > 0).

    `options` (runtime_options) become `parameters` and `optimization { graph { level } }`, so Triton
    runs the engine as it was timed; `dynamic_batching` prefers the batch sizes that were measured."""
    try:
        inputs, outputs = manifest_tensors(manifest, "inputs"), manifest_tensors(manifest, "outputs")
    except ExportError as exc:
        raise ExportError(f"{name}: {exc}") from None
    lines = [f"name: {_quote(name)}", f"platform: {_quote(platform)}", f"max_batch_size: {max_batch}"]
    lines += _tensors("input", inputs) + _tensors("output", outputs)
    lines += ["instance_group [", "  {", "    count: 1", f"    kind: {kind}", "  }", "]"]
    if max_batch > 1:  # Triton forms batches from single requests, at the sizes that were measured
        preferred = [b for b in batch_sizes or [] if 1 < b <= max_batch]
        lines += ["dynamic_batching {", *(f"  preferred_batch_size: {b}" for b in preferred), "}"]
    options = options or {}
    if options.get("graph_level") is not None:
        lines.append(f"optimization {{ graph {{ level: {options['graph_level']} }} }}")
    for key, value in sorted((options.get("parameters") or {}).items()):
        lines.append(f"parameters {{ key: {_quote(key)} value: {{ string_value: {_quote(value)} }} }}")
    for cc, file_name in sorted(files.items()):
        if cc:
            lines.append(f"cc_model_filenames {{ key: {_quote(cc)} value: {_quote(file_name)} }}")
        else:
            lines.append(f"default_model_filename: {_quote(file_name)}")
    return "\n".join(lines) + "\n"
