"""expand(): a validated spec and the cluster's targets become jobs with content keys.

A job's key is a hash of everything that determines its result: its parents' keys, the
backend and its version, the options and the target. The same spec on the same fleet
always yields the same keys, which is what makes resume and caching free.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from farm.spec import SweepSpec, data_digest, option_grid
from farm.store.schema import STAGES
from workers.backends import BACKENDS
from workers.backends.base import version_key
from workers.bench import BenchSettings
from workers.records import BuildRequest, ModelRef, Preprocess, Target

KEY_VERSION = 1  # bump to invalidate every cached result after a change in what a stage computes


def content_key(stage: str, **parts: Any) -> str:
    payload = json.dumps({"stage": stage, "v": KEY_VERSION, **parts}, sort_keys=True, default=_plain)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def _plain(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot hash {type(value).__name__}")


@dataclass(frozen=True)
class TargetGroup:
    """A target and what the cluster offers for it: the node ids and backend versions there."""

    target: Target
    nodes: tuple[str, ...]
    backends: dict[str, str] = field(default_factory=dict)  # name -> version on these nodes


@dataclass(frozen=True)
class Job:
    stage: ClassVar[str]
    key: str
    label: str
    needs: tuple[str, ...]  # keys of the jobs whose results this one consumes


@dataclass(frozen=True)
class ExportJob(Job):
    stage: ClassVar[str] = "export"
    model: ModelRef


@dataclass(frozen=True)
class VariantJob(Job):
    stage: ClassVar[str] = "variant"
    model: ModelRef
    precision: str


@dataclass(frozen=True)
class ReferenceJob(Job):
    stage: ClassVar[str] = "reference"
    model: ModelRef
    preprocess: Preprocess
    data: Path
    samples: int
    digest: str


@dataclass(frozen=True)
class BuildJob(Job):
    stage: ClassVar[str] = "build"
    request: BuildRequest
    backend_version: str


@dataclass(frozen=True)
class BenchmarkJob(Job):
    stage: ClassVar[str] = "benchmark"
    target: Target
    batch_size: int
    settings: BenchSettings


@dataclass(frozen=True)
class FidelityJob(Job):
    stage: ClassVar[str] = "fidelity"
    target: Target
    batch_size: int  # largest batch the engine accepts; inputs run in chunks of it




@dataclass
class Plan:
    jobs: list[Job]
    notes: list[str]  # what the spec asked for that this fleet cannot do, one line each

    def by_stage(self, stage: str) -> list[Job]:
        return [job for job in self.jobs if job.stage == stage]


def matches(target: Target, patterns: list[str]) -> bool:
    """A target is selected by its id, its kind ("cpu", "gpu", "rtx") or a case-insensitive part of its id."""
    if not patterns:
        return True
    return any(p == target.kind or p.lower() in target.id.lower() for p in patterns)


def expand(spec: SweepSpec, base: Path, groups: list[TargetGroup]) -> Plan:
    jobs: list[Job] = []
    notes: list[str] = []
    settings = spec.benchmark.settings()
    folder = spec.fidelity.folder(base)
    digest = data_digest(folder, spec.fidelity.samples)
    targets = [g for g in groups if matches(g.target, spec.targets)]
    if any(g.target.kind == "rtx" for g in targets):
        notes.append("rtx targets are build-only: engines are built and recorded, not benchmarked (no RTX GPU runtime here)")
    if not targets:
        seen = ", ".join(g.target.id for g in groups) or "none"
        notes.append(f"targets {spec.targets}: no target in the cluster matches (targets found: {seen})")
    for model_spec in spec.models:
        model = model_spec.ref(base)
        extra = {"onnx_sha256": _file_sha256(Path(model.source))} if model.kind == "onnx" else {}
        export = ExportJob(content_key("export", model=model, **extra), f"{model.name}", (), model)
        reference = ReferenceJob(
            content_key("reference", export=export.key, digest=digest, preprocess=model_spec.preprocess()),
            f"{model.name} fp32 reference",
            (export.key,),
            model,
            model_spec.preprocess(),
            folder,
            spec.fidelity.samples,
            digest,
        )
        jobs += [export, reference]
        for precision in spec.precisions:
            variant = VariantJob(
                content_key("variant", export=export.key, precision=precision),
                f"{model.name} {precision}",
                (export.key,),
                model,
                precision,
            )
            jobs.append(variant)
            for backend_name, axes in spec.backends.enabled().items():
                if backend_name == "torch" and model.kind == "onnx":
                    notes.append(f"model {model.name}: torch backend skipped (an ONNX-file source has no PyTorch module)")
                    continue
                backend_type = BACKENDS[backend_name]
                usable = [g for g in targets if g.target.kind in backend_type.target_kinds
                          and version_key(backend_type, g.target.kind) in g.backends]
                if not usable:
                    notes.append(f"backend {backend_name}: not installed on any selected target ({_install_hint(backend_name)})")
                    continue
                varying = {name for name, values in axes if len(values) > 1}
                for group in usable:
                    for options in option_grid(axes):
                        jobs += _build_jobs(variant, backend_name, options, varying, group, spec, settings, reference, export)
    return Plan(jobs=jobs, notes=list(dict.fromkeys(notes)))


def _build_jobs(
    variant: VariantJob,
    backend: str,
    options: dict[str, Any],
    varying: set[str],
    group: TargetGroup,
    spec: SweepSpec,
    settings: BenchSettings,
    reference: ReferenceJob,
    export: ExportJob,
) -> list[Job]:
    batch_sizes = tuple(spec.batch_sizes)
    request = BuildRequest(variant.model, variant.precision, backend, options, group.target, batch_sizes)
    profile = batch_sizes if getattr(BACKENDS[backend], "batch_profile", False) else ()
    version = group.backends[version_key(BACKENDS[backend], group.target.kind)]
    build = BuildJob(
        content_key("build", variant=variant.key, backend=backend, version=version, options=options, target=group.target.id, profile=profile),
        f"{variant.label} {backend}{_options_label({k: v for k, v in options.items() if k in varying})} @ {group.target.id}",
        (variant.key, export.key),
        request,
        version,
    )
    jobs: list[Job] = [build]
    if group.target.kind == "rtx":
        return jobs  # built ahead of time for GPUs this cluster need not have: nothing here can run it
    for batch in batch_sizes:
        jobs.append(
            BenchmarkJob(
                content_key("benchmark", build=build.key, batch=batch, settings=settings),
                f"{build.label} batch {batch}",
                (build.key,),
                group.target,
                batch,
                settings,
            )
        )
    jobs.append(
        FidelityJob(
            content_key("fidelity", build=build.key, reference=reference.key),
            f"{build.label} fidelity",
            (build.key, reference.key),
            group.target,
            max(batch_sizes),
        )
    )
    return jobs


def _options_label(options: dict[str, Any]) -> str:
    return "[" + ",".join(f"{k}={v}" for k, v in options.items()) + "]" if options else ""


def _install_hint(backend: str) -> str:
    hints = {"onnxruntime": "pip install onnxruntime", "torch": "pip install torch",
             "tensorrt": "TensorRT-RTX builds on any CPU worker for rtx:sm_NN targets: pip install 'farm[rtx]'; "
                         "GPU targets need datacenter TensorRT: pip install 'farm[tensorrt]'"}
    return hints.get(backend, f"pip install 'farm[{backend}]'")


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
