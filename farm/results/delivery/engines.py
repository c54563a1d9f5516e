"""One stored build as delivery sees it (StoredEngine): loaded from the store with the measurements
that succeeded, the compute capability Triton names its target by, and the manifest a bundle carries."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from typing import Any

from sqlalchemy.orm import Session

from farm.results.delivery.errors import ExportError
from farm.results.delivery.folders import plain_name
from farm.results.labels import short_key
from farm.results.queries import BuildDetail, build_detail, build_provenance
from farm.results.rows import target_by_id
from farm.store import schema


SHA256 = re.compile(r"[0-9a-f]{64}")
ENGINE_SUFFIX = {"tensorrt": ".plan", "onnxruntime": ".onnx", "torch": ".pt"}


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
        """The engine's sha256 (load_engine refuses a build without an engine), checked by check_stored."""
        assert self.engine_sha256
        check_stored(self)
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
    def row(self) -> str:
        return stored_row(self)

    @property
    def bundle_name(self) -> str:
        """The folder a bundle unpacks to (and `farm pull` writes by default), of names check_stored accepted."""
        check_stored(self)
        return f"{self.model}-{self.backend}-{self.precision}-{slug(self.target)}-{self.build_key[:8]}"


def stored_row(detail: BuildDetail) -> str:
    """Where a build's stored names were read, for a line that refuses one."""
    return f"build {short_key(detail.key)}"


def check_stored(detail: BuildDetail) -> None:
    """ExportError (one line naming the name and the build) unless the build's stored names that delivery
    makes paths of are plain names, and its engine's sha256 (the artifact's file name) is 64 hex digits:
    a store written by an older farm, or edited by hand, may hold `../../x` or `/tmp/x` in any of them."""
    for stored, name in (("model name", detail.model), ("backend", detail.backend), ("precision", detail.precision)):
        plain_name(name, stored, stored_row(detail))
    sha = detail.engine_sha256
    if sha is not None and not SHA256.fullmatch(sha):
        raise ExportError(f"engine sha256 {sha if len(sha) <= 40 else sha[:37] + '...'!r} of {stored_row(detail)} is not a sha256: refused", 2)


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
        compute_capability=compute_capability(target_by_id(session, detail.target)),
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
