"""Deliver engines: a bundle (engine + manifest.json), a verified copy on disk, a Triton model repository.

Every path out of the store checks the engine's sha256 while it streams, so a corrupt or
missing artifact is an error, never a silently broken deployment. Nothing here imports
`workers`: the dashboard builds its downloads with these functions.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import IO, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.results.queries import BuildDetail, build_detail, build_provenance
from farm.results.select import Candidate, Constraints, Objective, Untimed, candidates, rejected_variants, untimed, winners
from farm.store import Store, schema

ENGINE_SUFFIX = {"tensorrt": ".plan", "onnxruntime": ".onnx", "torch": ".pt"}
CHUNK = 1 << 20
TRITON_DTYPES = {
    "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64", "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32",
    "int64": "TYPE_INT64", "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
    "bfloat16": "TYPE_BF16", "string": "TYPE_STRING",
}


class ExportError(Exception):
    """A delivery that cannot be made; the message is one line for the terminal or the page.

    `code` is the CLI's exit status (farm.cli.common): 2 for a request that names nothing (an
    unknown model, target or batch size, an --out that is a file), 3 when nothing is eligible,
    1 when the delivery failed part way (a corrupt artifact, a write that failed)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


MAX_NAME = 200  # characters of a folder name here: farm.run.spec allows model names of 100, plus suffixes like _onnxruntime
# ONNX Runtime's graph_optimization_level as Triton's onnxruntime backend spells it (optimization.graph.level):
# -1 basic, 1 extended, 2 disabled; "all" is its default and is left out.
ORT_GRAPH_LEVELS = {"disable": 2, "basic": -1, "extended": 1}


def safe_folder(root: Path, name: str) -> Path:
    """`root / name`, refused unless `name` is one plain folder name: ".", "..", a separator or an
    overlong name (a store written before farm.run.spec checked names) would write, or rmtree, elsewhere."""
    plain = name not in ("", ".", "..") and not re.search(r"[/\\\x00]", name) and len(name) <= MAX_NAME
    folder = root / name
    if not plain or folder.resolve().parent != root.resolve():
        shown = name if len(name) <= 40 else name[:37] + "..."
        raise ExportError(f"model name {shown!r} cannot be a folder name under {root}: refused", 2)
    return folder


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """An OSError while writing under `path` (a read-only medium, a full disk, a path under a file,
    a name too long) becomes one line naming the path."""
    try:
        yield
    except ExportError:
        raise
    except OSError as exc:
        where = exc.filename or path
        raise ExportError(f"{where}: cannot write ({exc.strerror or exc})", 1) from None


def prepared_out(out_dir: Path) -> Path:
    """--out as a folder to write into: created, or refused with one line when it is a file."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"--out {out_dir}: is a file, not a folder", 2)
    with writing(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


@dataclass(frozen=True)
class StoredEngine(BuildDetail):
    """One build as delivery sees it: its detail (benchmarks and fidelity that succeeded only),
    the compute capability Triton names it by, and the batch sizes it was timed at."""

    compute_capability: str | None = None
    batch_sizes: tuple[int, ...] = ()
    # How to feed the engine and what its weights are: {"preprocess", "weights", "random_weights"}
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def build_key(self) -> str:
        return self.key

    @property
    def sha256(self) -> str:
        """The engine's sha256 (load_engine refuses a build without an engine)."""
        assert self.engine_sha256
        return self.engine_sha256

    @property
    def engine_manifest(self) -> dict[str, Any]:
        """The build's manifest as stored; anything but a JSON object reads as empty (the store is input too)."""
        return self.manifest if isinstance(self.manifest, dict) else {}

    @property
    def extra(self) -> dict[str, Any]:
        found = self.engine_manifest.get("extra")
        return found if isinstance(found, dict) else {}

    @property
    def engine_file(self) -> str:
        """The file name the engine is delivered under: what its manifest says (engine.pt2 for an
        AOTInductor package), else by backend."""
        named = self.extra.get("engine_file")
        if isinstance(named, str) and re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", named) and named not in (".", ".."):
            return named
        return "engine" + ENGINE_SUFFIX.get(self.backend, ".bin")  # a manifest's odd name is never used as a path

    @property
    def bundle_name(self) -> str:
        return f"{self.model}-{self.backend}-{self.precision}-{slug(self.target)}-{self.build_key[:8]}"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def load_engine(session: Session, build_key: str) -> StoredEngine:
    detail = build_detail(session, build_key)
    if detail is None:
        raise ExportError(f"no build {build_key}")
    if detail.status != "ok" or not detail.engine_sha256:
        raise ExportError(f"build {detail.label} has no engine (status {detail.status})")
    # What a bundle carries of its measurements: the metrics that succeeded, by their farm.results.metrics names.
    timed = [{k: v for k, v in b.items() if k not in ("status", "raw_ms", "error")} for b in detail.benchmarks if b["status"] == "ok"]
    fidelity = detail.fidelity if detail.fidelity and detail.fidelity["status"] == "ok" else None
    return replace(
        StoredEngine(**{f.name: getattr(detail, f.name) for f in fields(detail)}),
        manifest=dict(detail.manifest) if isinstance(detail.manifest, dict) else {},
        compute_capability=compute_capability(session.get(schema.Target, detail.target)),
        batch_sizes=tuple(b["batch_size"] for b in timed),
        fidelity=None if fidelity is None else {k: v for k, v in fidelity.items() if k not in ("status", "error")},
        benchmarks=timed,
        provenance=build_provenance(session, build_key),
    )


def compute_capability(target: schema.Target | None) -> str | None:
    """The capability as Triton names it: "9.0" for `NVIDIA H200 / sm_90` and `rtx:sm_90`; None for CPUs."""
    if target is None or target.kind == "cpu":
        return None
    if target.compute_capability:
        return target.compute_capability
    found = re.search(r"sm_(\d+)(\d)\b", target.id)
    return f"{found.group(1)}.{found.group(2)}" if found else None


def bundle_manifest(record: StoredEngine) -> dict[str, Any]:
    """The engine's own manifest plus what the farm knows: identity, checksum, measurements."""
    return record.engine_manifest | {
        "model": record.model,
        "backend": record.backend,
        "backend_version": record.backend_version or record.engine_manifest.get("backend_version"),
        "target": record.target,
        "compute_capability": record.compute_capability,
        "precision": record.precision,
        "options": record.options,
        "engine_file": record.engine_file,
        "engine_sha256": record.sha256,
        "engine_bytes": record.engine_bytes,
        "build_key": record.build_key,
        "label": record.label,
        "benchmarks": list(record.benchmarks),
        "fidelity": record.fidelity,
        # preprocess {resize, crop, mean, std}, weights (a name or null), random_weights: the names `farm best --json` uses
        **{k: record.provenance.get(k) for k in ("preprocess", "weights", "random_weights")},
    }


def _verified_chunks(store: Store, sha256: str) -> Iterator[bytes]:
    """The artifact's bytes in chunks; raises ExportError at the end if they do not hash to sha256."""
    path = store.artifacts.path(sha256)
    digest = hashlib.sha256()
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise ExportError(f"engine artifact {sha256} is missing from {store.artifacts.root}") from None
    with handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
            yield block
    if digest.hexdigest() != sha256:
        raise ExportError(f"engine artifact {sha256} is corrupt: its bytes hash to {digest.hexdigest()}")


def _copy_verified(store: Store, sha256: str, out: IO[bytes]) -> None:
    for block in _verified_chunks(store, sha256):
        out.write(block)


def engine_bundle(store: Store, build_key: str) -> bytes:
    """A ZIP of `<bundle_name>/engine.<ext>` and `<bundle_name>/manifest.json`, checked against sha256.

    Called only when someone downloads (st.download_button's callable), so an engine is read
    from disk on demand instead of being held in the server's memory on every rerun.
    """
    with store.session() as s:
        record = load_engine(s, build_key)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        # Engines hardly compress; storing them keeps a download as fast as a disk read.
        info = zipfile.ZipInfo(f"{record.bundle_name}/{record.engine_file}")
        info.compress_type = zipfile.ZIP_STORED
        with archive.open(info, "w", force_zip64=(record.engine_bytes or 0) >= 2**31) as entry:
            _copy_verified(store, record.sha256, entry)
        archive.writestr(f"{record.bundle_name}/manifest.json", json.dumps(bundle_manifest(record), indent=2),
                         compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def engine_bytes(store: Store, build_key: str) -> bytes:
    """The bare engine file, checked against its sha256."""
    with store.session() as s:
        record = load_engine(s, build_key)
    return b"".join(_verified_chunks(store, record.sha256))


def _write_verified(store: Store, sha256: str, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=destination.parent, prefix=".partial-", delete=False) as tmp:
        try:
            _copy_verified(store, sha256, tmp)
        except BaseException:
            tmp.close()
            os.unlink(tmp.name)
            raise
    os.chmod(tmp.name, 0o644)  # temporary files are private; a delivered engine is an ordinary file
    os.replace(tmp.name, destination)


def write_engine(store: Store, build_key: str, out_dir: Path) -> tuple[Path, Path]:
    """Write the engine file and manifest.json into out_dir (the bundle's layout, unzipped)."""
    with store.session() as s:
        record = load_engine(s, build_key)
    engine_path = out_dir / record.engine_file
    manifest_path = out_dir / "manifest.json"
    prepared_out(out_dir)
    with writing(out_dir):
        _write_verified(store, record.sha256, engine_path)
        manifest_path.write_text(json.dumps(bundle_manifest(record), indent=2) + "\n")
    return engine_path, manifest_path


def default_batch(batch_sizes: list[int], objective: Objective) -> int:
    """Latency is read at the smallest batch, throughput at the largest."""
    return max(batch_sizes) if objective == "throughput" else min(batch_sizes)


@dataclass(frozen=True)
class Picked:
    """The build `farm pull` hands out, and why that one."""

    build_key: str
    label: str
    summary: str  # its measurements, one line
    rule: str  # how it was chosen, one line


PULL_RULES = ("timed-precision", "smallest")


def pick_build(
    session: Session,
    model: str,
    target: str,
    objective: Objective = "p50",
    constraints: Constraints | float = 0.99,
    batch_size: int | None = None,
    precision: str | None = None,
    rule: str = "timed-precision",
) -> Picked:
    """The build of one model on one target: the winner where the target was timed; on a build-only
    target (rtx:*) the build of `precision`, else by `rule`. `target` is an id or a unique part of one."""
    constraints = Constraints.of(constraints)
    timed = candidates(session, model=model)
    build_only = untimed(session, model=model)
    ids = sorted({c.target for c in timed} | {u.target for u in build_only})
    if not ids:
        raise ExportError(f"no build of model {model if len(model) <= 60 else model[:57] + '...'!r}", 2)
    matched = [t for t in ids if t == target] or [t for t in ids if target.lower() in t.lower()]
    if not matched:
        raise ExportError(f"no target matching {target!r} for {model}; known: {', '.join(ids)}", 2)
    if len(matched) > 1:
        raise ExportError(f"--target {target!r} matches {len(matched)} targets ({'; '.join(matched)}): be more specific", 2)
    here = matched[0]
    if not any(c.target == here for c in timed):
        return _pick_untimed(model, here, [u for u in build_only if u.target == here], timed, objective, constraints, precision, rule)
    found = [c for c in timed if c.target == here and (precision is None or c.precision == precision)]
    sizes = sorted({c.batch_size for c in found})
    if not sizes:
        refused = [x for x in rejected_variants(session, model=model) if precision and x.engine.split()[0] == precision]
        if refused:  # judged before any build: say by how much
            raise ExportError(f"no {precision} build of {model} on {here}: {refused[0].line(constraints.confident_margin)}", 3)
        raise ExportError(f"no {precision} build of {model} on {here}", 2)
    batch = default_batch(sizes, objective) if batch_size is None else batch_size
    if batch not in sizes:
        raise ExportError(f"{model} on {here} was benchmarked at batch sizes {sizes}, not {batch}", 2)
    best = winners([c for c in found if c.batch_size == batch], objective, constraints)
    if not best:
        raise ExportError(f"no {precision + ' ' if precision else ''}build of {model} on {here} reaches {constraints.describe()}: "
                          f"{_shortfall([c for c in found if c.batch_size == batch], constraints)}; relax the constraints", 3)
    w = best[0]
    summary = (f"{w.label}: batch {w.batch_size}, p50 {w.p50_ms:.3f} ms, p99 {w.p99_ms:.3f} ms, {w.throughput:.1f} samples/s, "
               f"top-1 agreement {w.top1_agreement}" + (f"; {w.verdict.note}" if w.verdict and w.verdict.note else ""))
    return Picked(w.build_key, w.label, summary, f"the winner by {objective} under {constraints.describe()}")


def _shortfall(found: list[Candidate], constraints: Constraints) -> str:
    """By how much the closest build missed: its evidence, its reasons, and the floor it would meet."""
    closest = max(found, key=lambda c: c.evidence.interval[1] if c.evidence is not None else c.top1_agreement or 0.0)
    reached = closest.evidence.describe(constraints.confident_margin) if closest.evidence is not None else f"top-1 agreement {closest.top1_agreement}"
    would = closest.evidence.interval[1] if closest.evidence is not None else closest.top1_agreement
    floor = f" (its top-1 floor would be --min-top1-agreement {math.floor((would or 0.0) * 100) / 100:.2f})" if would is not None else ""
    return f"closest {closest.engine}: {reached}, {'; '.join(constraints.failures(closest))}{floor}"


def _pick_untimed(model: str, target: str, builds: list[Untimed], timed: list[Candidate], objective: Objective,
                  constraints: Constraints, precision: str | None, rule: str) -> Picked:
    if rule not in PULL_RULES:
        raise ExportError(f"--rule {rule!r}: expected one of {', '.join(PULL_RULES)}", 2)

    def smallest(pool: list[Untimed]) -> Untimed:
        return min(pool, key=lambda u: (u.engine_bytes or 0, u.label))

    if precision is not None:
        pool = [u for u in builds if u.precision == precision]
        if not pool:
            raise ExportError(f"no {precision} build of {model} on {target}; built: {', '.join(sorted({u.precision for u in builds}))}", 2)
        chosen, why = smallest(pool), f"the {precision} build you asked for (the smallest of {len(pool)})"
    elif rule == "smallest":
        chosen, why = smallest(builds), "rule smallest: the smallest engine built for this target"
    else:
        won = [w.precision for w in winners(timed, objective, constraints)]
        common = max(set(won), key=won.count) if won else None
        pool = [u for u in builds if u.precision == common]
        if pool:
            chosen, why = smallest(pool), (f"rule timed-precision: {common}, the precision that won on the timed targets "
                                           f"({won.count(common)} of {len(won)} winners); the smallest such build")
        else:
            chosen, why = smallest(builds), (f"rule timed-precision found no {common or 'timed'} build here: the smallest engine "
                                             "built for this target instead")
    size = f"{chosen.engine_bytes / 1e6:.1f} MB" if chosen.engine_bytes else "size unknown"
    summary = f"{chosen.label}: built, not timed ({size}; {chosen.why})"
    return Picked(chosen.build_key, chosen.label, summary, why)


# --- Triton ----------------------------------------------------------------------------------


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
        targets = {t.id: t for t in s.scalars(select(schema.Target))}
    if not found:
        raise ExportError("no benchmarked builds: run `farm sweep SPEC` first", 3)
    prepared_out(out_dir)
    for model in sorted({c.model for c in found}):
        mine = [c for c in found if c.model == model]
        try:
            safe_folder(out_dir, model)
        except ExportError as exc:
            repo.notes.append(f"{str(exc)} (skipped)")
            continue
        chosen = _choose(mine, targets, objective, min_top1_agreement, batch_size, repo.notes)
        gpu = {t: c for t, c in chosen.items() if targets[t].kind == "gpu" and c.backend == "tensorrt"}
        cpu = {t: c for t, c in chosen.items() if targets[t].kind == "cpu" and c.backend == "onnxruntime"}
        if gpu:
            repo.models.append(_write_gpu_model(store, out_dir, model, gpu, targets, repo.notes))
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
) -> TritonModel:
    by_cc: dict[str, Candidate] = {}
    for target_id, c in sorted(chosen.items()):
        cc = compute_capability(targets[target_id])
        if cc is None:
            notes.append(f"{name} @ {target_id}: unknown compute capability (skipped)")
        elif cc in by_cc:
            notes.append(f"{name}: {target_id} and {by_cc[cc].target} share compute capability {cc}; Triton picks by capability, so {by_cc[cc].target} is used")
        else:
            by_cc[cc] = c
    files = {cc: f"model_sm{cc.replace('.', '')}.plan" for cc in by_cc}
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
    model_dir = safe_folder(out_dir, name)
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
    with writing(model_dir):
        if model_dir.exists():
            shutil.rmtree(model_dir)
        for file_name, record in records.items():
            _write_verified(store, record.sha256, model_dir / "1" / file_name)
            # Non-numeric folders are not versions to Triton, so the manifests can live beside 1/.
            manifest_path = model_dir / "manifests" / f"{file_name}.json"
            manifest_path.parent.mkdir(parents=True, exist_ok=True)
            manifest_path.write_text(json.dumps(bundle_manifest(record), indent=2) + "\n")
        (model_dir / "config.pbtxt").write_text(config)
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
