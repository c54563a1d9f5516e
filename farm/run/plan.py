"""expand(): a validated spec and the cluster's targets become jobs (farm.run.jobs) with content keys.

What the spec asks for and the fleet cannot do becomes a note, never an error: a backend
installed on no selected target, the PyTorch baseline of an ONNX-file model.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from farm.run.jobs import DataRef, Job, Plan, TargetGroup, content_key
from farm.run.stages import (
    BenchmarkJob,
    BuildJob,
    CalibrateJob,
    ExportJob,
    FidelityJob,
    ReferenceJob,
    RetimeJob,
    RetimeSettings,
    VariantJob,
)
from farm.results.evidence import EVIDENCE_VERSION
from farm.run.judge_set import check_judge_set
from farm.run.model_inputs import key_inputs, search_path
from farm.run.spec.checks import content_digest
from farm.run.spec.errors import SpecError
from farm.run.spec.schema import Axes, ModelSpec, SweepSpec
from workers.backends import BACKENDS
from workers.backends.base import Backend
from workers.bench import BenchSettings
from workers.fidelity import SHIFT_MIN_WIDTH, SHIFT_PIXELS
from workers.precision import DEFAULT_LAYOUT, INT8_LAYOUTS, calibration_settings
from workers.structs import BuildRequest, ModelRef, Target

def matches(target: Target, patterns: list[str]) -> bool:
    """A target is selected by its id, its kind ("cpu", "gpu", "rtx") or a case-insensitive part of its id."""
    if not patterns:
        return True
    return any(p == target.kind or p.lower() in target.id.lower() for p in patterns)


def data_refs(spec: SweepSpec, base: Path, model: ModelSpec, contents: dict[Path, str] | None = None,
              excluded: tuple[str, ...] | None = None) -> tuple[DataRef, DataRef]:
    """The calibration rows and the held-out rows for one model's preprocessing.

    `contents` caches each path's content hash, so a sweep of many models reads its data once.
    `excluded`: the held-out files not judged (farm.run.judge_set; checked here when not given).
    """
    contents = {} if contents is None else contents
    excluded = check_judge_set(spec, base).excluded if excluded is None else excluded

    def data_digest(path: Path, *parts: object) -> str:
        if path not in contents:
            contents[path] = content_digest(path)
        return content_key("data", content=contents[path], parts=repr(parts))

    calibration_path = spec.calibration.folder(base)
    fidelity_path = spec.fidelity.folder(base, spec.calibration)
    shared = spec.needs_calibration() and calibration_path.resolve() == fidelity_path.resolve()
    preprocess, shape, labels = model.preprocessing(), tuple(model.input_shape), spec.fidelity.labels_file(base)
    calibration = DataRef(calibration_path, preprocess, shape, "calibration", spec.calibration.samples,
                          spec.fidelity.samples if shared else 0, None,
                          data_digest(calibration_path, preprocess, shape, "calibration", spec.calibration.samples))
    # The files left out change which rows are judged: part of the digest, only when there are some.
    heldout = DataRef(fidelity_path, preprocess, shape, "heldout", spec.fidelity.samples,
                      spec.calibration.samples if shared else 0, labels,
                      data_digest(fidelity_path, preprocess, shape, "heldout", spec.fidelity.samples,
                                  data_digest(labels, "labels") if labels else None, *((excluded,) if excluded else ())),
                      excluded)
    return calibration, heldout


def same_targets(groups: list[TargetGroup], others: list[TargetGroup]) -> bool:
    """Whether `expand` plans the same jobs for both: it reads each group's target, backend versions and int8
    traits, in order, never which nodes make it up (a local look names its node "local", Ray by its id)."""
    return [replace(g, nodes=()) for g in groups] == [replace(g, nodes=()) for g in others]


def target_problem(spec: SweepSpec, groups: list[TargetGroup]) -> str | None:
    """Why no job of the spec could run on these targets: none matches its `targets` patterns."""
    if any(matches(g.target, spec.targets) for g in groups):
        return None
    seen = "; ".join(g.target.id for g in groups) or "none"
    return f"targets: {', '.join(spec.targets)}: no target in the cluster matches (targets found: {seen})"


def expand(spec: SweepSpec, base: Path, groups: list[TargetGroup]) -> Plan:
    jobs: list[Job] = []
    notes: list[str] = []
    contents: dict[Path, str] = {}
    search = search_path()
    settings = spec.benchmark.settings()
    judge_set = check_judge_set(spec, base)
    notes += judge_set.notes
    targets = [g for g in groups if matches(g.target, spec.targets)]
    if any(g.target.kind == "rtx" for g in targets):
        notes.append("rtx targets are build-only: engines are built and recorded, not benchmarked (no RTX GPU runtime here)")
    if (problem := target_problem(spec, groups)) is not None:  # nothing could run: a bad input, not a sweep of notes that exits 0
        raise SpecError(problem)
    for pattern in spec.targets:
        if not any(matches(g.target, [pattern]) for g in groups):
            notes.append(f"targets: {pattern!r} matches no target in the cluster now: its jobs are not planned "
                         f"(targets found: {'; '.join(g.target.id for g in groups)})")
    # What the loops below read of the spec, read once: the (precision, method) pairs, and each backend's
    # blocks with their option combinations and the options that vary between them.
    variant_axes = _variant_axes(spec, notes)
    grids = {name: [(block, block.combinations()) for block in blocks] for name, blocks in spec.backends.enabled().items()}
    varying = {name: _varying(grid) for name, grid in grids.items()}
    for model_spec in spec.models:
        model = model_spec.ref(base)
        inputs = key_inputs(model_spec, model, base, search)
        export = ExportJob(content_key("export", model=model, inputs=inputs), f"{model.name}", model, inputs)
        calibration_data, heldout = data_refs(spec, base, model_spec, contents, judge_set.excluded)
        # noise_floor: references recorded before fp32 was judged against its own shifted run are not reused
        boxes = spec.fidelity.box_score_threshold if model.task == "detection" else None  # what a detector's noise floor counts
        reference = ReferenceJob(content_key("reference", export=export.key, data=heldout.digest, noise_floor=[SHIFT_PIXELS, SHIFT_MIN_WIDTH],
                                             boxes=boxes),
                                 f"{model.name} fp32 reference", export.key, model, heldout)
        jobs += [export, reference]
        calibrations: dict[str, CalibrateJob] = {}
        for precision, method in variant_axes:
            if method is not None and method not in calibrations:
                percentile = spec.calibration.percentile if method == "percentile" else 0.0
                calibrations[method] = CalibrateJob(
                    content_key("calibrate", export=export.key, method=method, percentile=percentile, data=calibration_data.digest,
                                settings=calibration_settings(method)),
                    f"{model.name} calibration {method}" + (f" {percentile}" if percentile else ""),
                    export.key,
                    model,
                    method,
                    percentile,
                    calibration_data,
                )
                jobs.append(calibrations[method])
            variants: dict[str, VariantJob] = {}  # by form (an int8 layout, or "module"): made when a build first needs one

            def variant_for(form: str) -> VariantJob:
                if form not in variants:
                    variants[form] = _variant_job(spec, model, precision, method, export, reference,
                                                  calibrations.get(method or ""), heldout, form)
                    jobs.append(variants[form])
                return variants[form]

            for backend_name, grid in grids.items():
                backend_type = BACKENDS[backend_name]
                if backend_type.consumes == "checkpoint" and model.kind == "onnx":
                    notes.append(f"model {model.name}: {backend_name} backend skipped (an ONNX-file source has no PyTorch module)")
                    continue
                if precision not in backend_type.precisions:
                    if precision == "bf16":
                        notes.append(f"precision bf16: {backend_name} builds no bf16 engine (PyTorch engines do)")
                    continue
                kinds = [g for g in targets if g.target.kind in backend_type.target_kinds]
                usable = [g for g in kinds if backend_type.version_key(g.target.kind) in g.backends]
                if not kinds:
                    notes.append(f"backend {backend_name}: runs on {'/'.join(backend_type.target_kinds)} targets; "
                                 f"none is selected ({'; '.join(g.target.id for g in targets)}) ({_install_hint(backend_name)})")
                    continue
                if not usable:
                    notes.append(f"backend {backend_name}: not installed on any selected target ({_install_hint(backend_name)})")
                    continue
                for group in usable:
                    form = _variant_form(backend_type, precision, group)
                    for options, batch_sizes in _builds_of(backend_type, grid, model.name, precision, group,
                                                           spec.batch_sizes, model_spec.batch_sizes):
                        jobs += _build_jobs(variant_for(form), backend_name, options, varying[backend_name], group, spec, settings,
                                            reference, export, batch_sizes)
    if spec.selection.retime.enabled:
        jobs += _retime_jobs(jobs, spec)
    return Plan(jobs=jobs, notes=list(dict.fromkeys(notes)))


def _retime_jobs(jobs: list[Job], spec: SweepSpec) -> list[Job]:
    """One re-timing per (model, target, batch size) with two or more benchmarked builds."""
    builds = {j.key: j for j in jobs if isinstance(j, BuildJob)}
    fidelity = {j.build_key: j.key for j in jobs if isinstance(j, FidelityJob)}
    groups: dict[tuple[str, str, int], list[BenchmarkJob]] = {}
    for job in jobs:
        if isinstance(job, BenchmarkJob):
            model = builds[job.build_key].request.model.name
            groups.setdefault((model, job.target.id, job.batch_size), []).append(job)
    retime = spec.selection.retime
    settings = RetimeSettings(spec.selection.objective, retime.reach, retime.max_candidates, retime.rounds, retime.window_s)
    constraints = spec.fidelity.constraints()
    found: list[Job] = []
    for (model, _target, batch), benchmarks in groups.items():
        if len(benchmarks) < 2:
            continue  # one build: nothing to compare
        bench_keys = tuple(b.key for b in benchmarks)
        fid_keys = tuple(fidelity.get(b.build_key, "") for b in benchmarks)
        key = content_key("retime", benchmarks=bench_keys, fidelity=fid_keys, constraints=constraints, settings=settings)
        target = benchmarks[0].target
        found.append(RetimeJob(key, f"{model} @ {target.id} batch {batch} re-timed", model, target, batch, bench_keys, fid_keys,
                               constraints, settings))
    return found


Grid = list[tuple[Axes, list[dict[str, Any]]]]  # a backend's blocks, each with its option combinations (Axes.combinations)


def _varying(grid: Grid) -> set[str]:
    """The options whose value differs between some of a backend's builds: what their labels show."""
    seen: dict[str, set[str]] = {}
    for _block, combinations in grid:
        for options in combinations:
            for name, value in options.items():
                seen.setdefault(name, set()).add(json.dumps(value))
    return {name for name, values in seen.items() if len(values) > 1}


def _variant_form(backend: type[Backend], precision: str, group: TargetGroup) -> str:
    """Which variant a backend builds `precision` from on a target: an int8 layout, or a module cast."""
    if backend.consumes == "checkpoint":
        return "module" if precision != "fp32" else DEFAULT_LAYOUT  # fp32: the export, shared with every backend
    return backend.int8_layout(group.cpu_arch, group.int8_dot_32bit) if precision == "int8" else DEFAULT_LAYOUT


def _builds_of(backend: type[Backend], grid: Grid, model: str, precision: str, group: TargetGroup,
               sweep_batch_sizes: list[int], model_batch_sizes: list[int] | None) -> list[tuple[dict[str, Any], tuple[int, ...]]]:
    """One (options, batch sizes) per distinct build: each block's combinations (for the blocks that
    take this model and precision), with what a backend says does not apply dropped (`applies`), and
    one build for options that several blocks share, timed at the union of their batch sizes."""
    found: dict[str, tuple[dict[str, Any], list[int]]] = {}
    for block, combinations in grid:
        if not block.takes(model, precision):
            continue
        # a block's own batch sizes, else the sweep's; a model that takes only some keeps only those
        batch_sizes = [b for b in block.batch_sizes or sweep_batch_sizes if model_batch_sizes is None or b in model_batch_sizes]
        for options in combinations:
            used = backend.applies(options, precision, group.target.kind)
            if used is None:
                continue
            if not batch_sizes:
                continue
            entry = found.setdefault(json.dumps(used, sort_keys=True), (used, []))
            entry[1].extend(b for b in batch_sizes if b not in entry[1])
    return [(options, tuple(sorted(batches))) for options, batches in found.values()]


def _variant_axes(spec: SweepSpec, notes: list[str]) -> list[tuple[str, str | None]]:
    """(precision, calibration method) pairs: int8 and fp8 once per method that suits them."""
    from workers.precision import FP8_METHODS, INT8_METHODS

    pairs: list[tuple[str, str | None]] = []
    for precision in spec.precisions:
        if precision in ("fp32", "fp16", "bf16"):
            pairs.append((precision, None))
            continue
        allowed = INT8_METHODS if precision == "int8" else FP8_METHODS
        usable = [m for m in spec.calibration.methods if m in allowed]
        for method in spec.calibration.methods:
            if method not in allowed:
                notes.append(f"calibration method {method}: not for {precision} ({precision} takes {', '.join(allowed)})")
        pairs += [(precision, m) for m in usable]
    return pairs


def _variant_job(
    spec: SweepSpec,
    model: ModelRef,
    precision: str,
    method: str | None,
    export: ExportJob,
    reference: ReferenceJob,
    calibration: CalibrateJob | None,
    heldout: DataRef,
    form: str = DEFAULT_LAYOUT,
) -> VariantJob:
    if form == "module":  # fp16 / bf16 for backends that cast the PyTorch module themselves
        return VariantJob(content_key("variant", export=export.key, precision=precision, form=form),
                          f"{model.name} {precision} module", export.key, model, precision, form=form)
    layout = form
    if precision == "fp32":
        return VariantJob(content_key("variant", export=export.key, precision=precision), f"{model.name} fp32", export.key, model, precision)
    if precision == "fp16":
        options = spec.fp16.model_dump()
        return VariantJob(content_key("variant", export=export.key, precision=precision, fp16=options),
                          f"{model.name} fp16", export.key, model, precision, fp16=options)
    assert calibration is not None
    fallback = spec.fidelity.fallback
    tries = fallback.max_tries if fallback.enabled and model.task == "classification" else 0
    floor = spec.fidelity.min_top1_agreement
    margin = spec.fidelity.confident_margin if spec.fidelity.eligibility == "evidence" else None
    # Fallbacks judged by fake-quant arithmetic ("evaluation") replaced ones judged by the worker CPU's kernels.
    key = content_key("variant", export=export.key, precision=precision, calibration=calibration.key,
                      layout=layout if layout != DEFAULT_LAYOUT else None,
                      fallback={"tries": tries, "floor": floor, "reference": reference.key, "evaluation": "fake_quant",
                                "max_float_fraction": fallback.max_float_fraction,
                                **({"min_cosine": spec.fidelity.min_cosine} if spec.fidelity.min_cosine is not None else {}),
                                **({"confident_margin": margin} if margin is not None else {})}
                      if tries else None)
    label = " ".join(filter(None, (model.name, precision, method, INT8_LAYOUTS[layout].label)))
    return VariantJob(key, label, export.key, model, precision, calibration.key, reference.key, method,
                      min_top1_agreement=floor, min_cosine=spec.fidelity.min_cosine, fallback_tries=tries, heldout=heldout, layout=layout,
                      max_float_fraction=fallback.max_float_fraction, confident_margin=margin)


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
    batch_sizes: tuple[int, ...],
) -> list[Job]:
    request = BuildRequest(variant.model, variant.precision, backend, options, group.target, batch_sizes)
    backend_type = BACKENDS[backend]
    profile = batch_sizes if backend_type.batch_profile else ()
    version = group.backends[backend_type.version_key(group.target.kind)]
    build = BuildJob(
        content_key("build", variant=variant.key, backend=backend, version=version, options=options, target=group.target.id, profile=profile),
        f"{variant.label} {backend}{_options_label({k: v for k, v in options.items() if k in varying})} @ {group.target.id}",
        variant.key,
        export.key,
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
                build.key,
                group.target,
                batch,
                settings,
            )
        )
    jobs.append(
        FidelityJob(
            content_key("fidelity", build=build.key, reference=reference.key, evidence=EVIDENCE_VERSION,
                        boxes=spec.fidelity.box_score_threshold if variant.model.task == "detection" else None),
            f"{build.label} fidelity",
            build.key,
            reference.key,
            group.target,
            max(batch_sizes),
            spec.fidelity.box_score_threshold,
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

