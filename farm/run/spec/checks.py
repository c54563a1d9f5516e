"""What a valid spec asks of the world, checked before any work: the memory its batches would need
(`resource_problem`, run by load_spec) and the files it names (`check_inputs`: model sources,
calibration and held-out data, labels); and `content_digest`, the hash of that data a plan keys on.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

from farm.run.spec.errors import SpecError, one_line
from farm.run.spec.schema import ModelSpec, SweepSpec

ACTIVATION_FACTOR = 16  # a CNN's activations run to several times its input: the estimate's margin
BYTES_PER_VALUE = 4  # float32


def model_batch_sizes(spec: SweepSpec, model: ModelSpec) -> list[int]:
    """Every batch size some build of `model` runs at (farm.run.plan's rule: a block's own batch sizes, else
    the sweep's, kept only where the model takes them)."""
    found: set[int] = set()
    for blocks in spec.backends.enabled().values():
        for block in blocks:
            if block.models is None or model.name in block.models:
                found |= {b for b in block.batch_sizes or spec.batch_sizes if model.batch_sizes is None or b in model.batch_sizes}
    return sorted(found or set(model.batch_sizes or spec.batch_sizes))


def resource_problem(spec: SweepSpec) -> str | None:
    """The first model whose input would not fit the memory bound, as `field: what and why`, or None.

    The estimate is input values x batch x 4 bytes x ACTIVATION_FACTOR per batch (a worker's
    export, build or benchmark), and the calibration and held-out rows the driver holds at once;
    both must stay under `limits.memory_gib`."""
    limit = spec.limits.memory_gib * 2**30
    rows = spec.calibration.samples + spec.fidelity.samples
    for i, model in enumerate(spec.models):
        values = math.prod(model.input_shape)
        batch = max(model_batch_sizes(spec, model))
        need = values * batch * BYTES_PER_VALUE * ACTIVATION_FACTOR
        if need > limit:
            return (f"models[{i}].input_shape: {list(model.input_shape)} at batch {batch} needs about {_gib(need)} "
                    f"({values:,} values x batch {batch} x {BYTES_PER_VALUE} bytes x {ACTIVATION_FACTOR} for activations), "
                    f"over limits.memory_gib {spec.limits.memory_gib:g}")
        held = values * rows * BYTES_PER_VALUE
        if held > limit:
            return (f"models[{i}].input_shape: {rows} rows of {list(model.input_shape)} (calibration.samples + fidelity.samples) "
                    f"need about {_gib(held)} in the driver, over limits.memory_gib {spec.limits.memory_gib:g}")
    return None


def _gib(size: int) -> str:
    return f"{size / 2**30:,.0f} GiB" if size >= 2**30 else f"{size / 2**20:,.0f} MiB"

def content_digest(path: Path) -> str:
    """A content hash of input data (a folder's files or one file): a changed image means new
    calibration ranges, references and fidelity."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
    for file in files:
        digest.update(file.name.encode())
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()[:32]


def check_inputs(spec: SweepSpec, base: Path, spec_path: str, *, call_factories: bool = True) -> None:
    """Fail before any work (before Ray starts) when the spec points at sources that cannot serve:
    a torchvision name torchvision lacks, a factory that cannot be imported or has no such function,
    or (with `call_factories`: once, in a child interpreter) returns something that is not a torch.nn.Module;
    an ONNX source that is missing, a directory, too large or with external data outside its folder;
    calibration or fidelity data that is missing or holds too few samples (counted from file
    headers, nothing decoded) or array rows holding NaN or Inf; a labels file that is not a file.
    Raises SpecError, one line."""
    from workers.calibration import CalibrationDataError, count_samples, nonfinite_problem
    from workers.models import external_data_problem, onnx_file_problem

    for i, model in enumerate(spec.models):
        problem = _source_problem(model, call_factories)
        if problem:
            raise SpecError(one_line(f"{spec_path}: models[{i}].source: {problem}"))
        if model.source.endswith(".onnx"):
            path = Path(model.ref(base).source)
            problem = onnx_file_problem(path)
            if problem:
                where = " (relative paths start at the spec's folder)" if not path.exists() else ""
                raise SpecError(one_line(f"{spec_path}: models[{i}].source: {problem}{where}"))
            proto = _parsed_onnx(path)  # once: the graph with its inline weights, never the external data
            if proto is not None:
                found = external_data_problem(proto)
                problem = (f"{path}: {found}" if found else None) or _onnx_input_problem(proto, path, model, model_batch_sizes(spec, model), i)
                if problem:
                    raise SpecError(one_line(f"{spec_path}: models[{i}].source: {problem}"))
    for field, path, needed in _data_needs(spec, base):
        if not path.exists():
            raise SpecError(one_line(f"{spec_path}: {field}: {path} does not exist (relative paths start at the spec's folder)"))
        try:
            count = count_samples(path)
            for model in spec.models:
                usable = count.samples(model.input_shape)
                if usable < needed:
                    detail = f"; {len(count.skipped)} skipped, first: {count.skipped[0]}" if count.skipped else ""
                    raise SpecError(one_line(f"{spec_path}: {field}: {path} holds {usable} usable samples, {needed} needed{detail}"))
            if (problem := nonfinite_problem(path)) is not None:
                raise SpecError(one_line(f"{spec_path}: {field}: {problem}"))
        except CalibrationDataError as exc:
            raise SpecError(one_line(f"{spec_path}: {field}: {exc}")) from None
        except OSError as exc:
            raise SpecError(one_line(f"{spec_path}: {field}: cannot read {path} ({exc.strerror or exc})")) from None
    labels = spec.fidelity.labels_file(base)
    if labels is not None and not labels.is_file():
        raise SpecError(one_line(f"{spec_path}: fidelity.labels: {labels} is not a file"))


def _source_problem(model: ModelSpec, call_factory: bool) -> str | None:
    """Why a torchvision or factory source cannot be loaded, found without importing torch here: a torchvision
    name it does not have (the closest suggested), a factory module not on the path, one that does not
    parse, or one without the function; then, with `call_factory`, a factory that returns no Module (a child
    interpreter calls it). A driver without torchvision leaves that to the export stage."""
    from workers.factory_call import factory_return_problem
    from workers.sources import closest, factory_problem, search_path, torchvision_models

    kind, _, name = model.source.partition(":")
    if kind == "torchvision":
        known = torchvision_models(search_path())
        return f"torchvision has no model named {name!r}{closest(name, known)}" if known is not None and name not in known else None
    if model.source.endswith(".onnx"):
        return None
    problem = factory_problem(model.source, search_path())
    return problem or (factory_return_problem(model.source, model.kwargs, search_path()) if call_factory else None)


def _onnx_input_problem(proto: Any, path: Path, model: ModelSpec, batches: list[int], index: int) -> str | None:
    """Where an ONNX file's graph input contradicts the spec: a batch dimension fixed at one size while
    others are asked for (what a default torch.onnx.export leaves), or fixed dimensions other than
    input_shape. Either fails every job of the model mid-sweep."""
    initializers = {i.name for i in proto.graph.initializer}
    graph_input = next((i for i in proto.graph.input if i.name not in initializers), None)
    if graph_input is None or not graph_input.type.tensor_type.HasField("shape"):
        return None
    dims = [d.dim_value if d.HasField("dim_value") else None for d in graph_input.type.tensor_type.shape.dim]
    shown = "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
    if not dims:
        return None
    fixed_batch = dims[0]
    if fixed_batch is not None and any(b != fixed_batch for b in batches):
        return (f"{path.name} fixes input {graph_input.name!r} at batch {fixed_batch} (shape {shown}) but batch sizes "
                f"{', '.join(map(str, batches))} are asked for: export with dynamic_axes={{{graph_input.name!r}: {{0: 'batch'}}}}, "
                f"or give this model batch_sizes: [{fixed_batch}]")
    sample = dims[1:]
    if len(sample) != len(model.input_shape) or any(d is not None and d != want for d, want in zip(sample, model.input_shape, strict=False)):
        return (f"{path.name}'s input {graph_input.name!r} has shape {shown} but models[{index}].input_shape is "
                f"{list(model.input_shape)}: give input_shape: [{', '.join('?' if d is None else str(d) for d in sample)}]")
    return None


def _parsed_onnx(path: Path) -> Any:
    """The ONNX file's graph without external data, or None where it does not parse: the export stage
    records why (a broken model fails alone, the sweep goes on)."""
    import onnx

    try:
        return onnx.load_model(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - any parse failure: reported by the export job
        return None


def _data_needs(spec: SweepSpec, base: Path) -> list[tuple[str, Path, int]]:
    """(field, path, samples needed) of the data the sweep reads: held-out rows always, calibration rows
    for int8 / fp8; one path serving both must hold both (farm.run.plan.data_refs takes them from its two ends)."""
    fidelity = spec.fidelity.folder(base, spec.calibration)
    field = "fidelity.data" if spec.fidelity.data else "calibration.data"
    if not spec.needs_calibration():
        return [(field, fidelity, spec.fidelity.samples)]
    calibration = spec.calibration.folder(base)
    if calibration.resolve() == fidelity.resolve():
        return [("calibration.data", calibration, spec.calibration.samples + spec.fidelity.samples)]
    return [(field, fidelity, spec.fidelity.samples), ("calibration.data", calibration, spec.calibration.samples)]
