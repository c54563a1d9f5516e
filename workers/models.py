"""Model sources and the export stage: a network becomes one ONNX file with a dynamic batch axis.

Sources: `torchvision:NAME` (with an explicit weights choice), an ONNX file, or a Python
factory `package.module:function` returning a `torch.nn.Module`. The export also returns the
exact weights it exported (a state_dict checkpoint), so the PyTorch baseline and every ONNX
variant run the same numbers even when the weights are random.
"""

from __future__ import annotations

import importlib
import io
import re
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import onnx

from workers.sources import FactoryNotFound, factory_source, search_path
from workers.structs import ExportInfo, ModelRef, TensorSpec

BATCH_AXIS = "batch"
# One protobuf cannot exceed 2 GiB, so a larger .onnx file is not an ONNX model (bigger models keep
# their weights as external data beside it); checked before the file is read into memory.
MAX_ONNX_BYTES = 2 << 30
# Never re-imported by forget_factory, whatever a factory imports: the code running it.
FARM_PACKAGES = frozenset({"farm", "workers"})


class ModelSourceError(ValueError):
    """The model cannot be loaded as the spec describes it."""


@dataclass
class Exported:
    onnx_bytes: bytes
    checkpoint: bytes | None  # torch state_dict (None for ONNX-file sources)
    info: ExportInfo


def load_module(model: ModelRef) -> Any:
    """Instantiate the PyTorch module for a torchvision or factory source, in eval mode."""
    import torch

    torch.manual_seed(model.seed)  # random-init weights are reproducible, and saved with the export anyway
    if model.kind == "torchvision":
        module = _torchvision_module(model)
    elif model.kind == "factory":
        module = _factory_module(model)
    else:
        raise ModelSourceError(f"model {model.name}: {model.source} is an ONNX file and has no PyTorch module")
    return module.eval()


def _torchvision_module(model: ModelRef) -> Any:
    import torchvision

    arch = model.source.split(":", 1)[1]
    if arch not in torchvision.models.list_models():
        raise ModelSourceError(f"model {model.name}: torchvision has no model named {arch!r}")
    if model.weights is None:
        # A detector's default backbone weights are a download too: random means random throughout.
        detector = arch in torchvision.models.list_models(module=torchvision.models.detection)
        return torchvision.models.get_model(arch, weights=None, **({"weights_backbone": None} if detector else {}), **dict(model.kwargs))
    try:
        weights = torchvision.models.get_model_weights(arch)[model.weights] if model.weights != "DEFAULT" else "DEFAULT"
    except KeyError:
        known = ", ".join(w.name for w in torchvision.models.get_model_weights(arch))
        raise ModelSourceError(f"model {model.name}: weights {model.weights!r} unknown for {arch} (known: {known})") from None
    try:
        return torchvision.models.get_model(arch, weights=weights, **dict(model.kwargs))
    except Exception as exc:  # a download that fails must never fall back to random weights
        raise ModelSourceError(
            f"model {model.name}: weights {model.weights} for {arch} are not in the torch hub cache and could not be "
            f"downloaded ({type(exc).__name__}: {exc}); put the file under $TORCH_HOME/hub/checkpoints or use weights: null"
        ) from exc


def _factory_module(model: ModelRef) -> Any:
    module_name, _, function_name = model.source.partition(":")
    try:
        forget_factory(module_name)
        factory = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        raise ModelSourceError(f"model {model.name}: cannot import factory {model.source} ({exc})") from exc
    import torch

    module = factory(**dict(model.kwargs))
    if not isinstance(module, torch.nn.Module):
        raise ModelSourceError(f"model {model.name}: factory {model.source} returned {type(module).__name__}, not a torch.nn.Module")
    return module


def forget_factory(module_name: str) -> None:
    """Drop this process's imports of a factory's own files, so the next import reads them as they are
    now. A Ray worker outlives a sweep run from a notebook or a test: without this, a factory edited
    between two runs gets a new export key (the driver hashes the files) but the old module's graph."""
    try:
        own = {str(path) for path in factory_source(module_name, search_path()).files}
    except FactoryNotFound:
        return  # the import that follows says why
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if path and str(Path(path).resolve()) in own and name.split(".")[0] not in FARM_PACKAGES:
            del sys.modules[name]
    importlib.invalidate_caches()


def export(model: ModelRef, onnx_file: bytes | None = None) -> Exported:
    """Export `model` to ONNX (or check a given ONNX file) and describe its inputs and outputs."""
    started = time.perf_counter()
    checkpoint = None
    torch_version = None
    if model.kind == "onnx":
        data = onnx_file if onnx_file is not None else _read_onnx_file(model)
    else:
        import torch

        # A plain str: torch's TorchVersion pickles as a torch class, and the driver that reads
        # this record must not have to import torch to do so.
        torch_version = str(torch.__version__)
        module = load_module(model)
        data = _to_onnx(module, model)
        buffer = io.BytesIO()
        torch.save(module.state_dict(), buffer)
        checkpoint = buffer.getvalue()
    proto = _check(data, model)
    info = ExportInfo(
        opset=_opset(proto),
        inputs=tuple(_tensor_specs(proto.graph.input, exclude={i.name for i in proto.graph.initializer})),
        outputs=tuple(_tensor_specs(proto.graph.output)),
        node_count=len(proto.graph.node),
        seconds=time.perf_counter() - started,
        torch_version=torch_version,
    )
    return Exported(onnx_bytes=data, checkpoint=checkpoint, info=info)


def onnx_file_problem(path: Path) -> str | None:
    """Why `path` cannot be read as a model file, in a phrase after its name, or None."""
    if path.is_dir():
        return f"{path} is a directory, not an .onnx file"
    if not path.exists():
        return f"{path} does not exist"
    if not path.is_file():
        return f"{path} is not a regular file"
    size = path.stat().st_size
    if size > MAX_ONNX_BYTES:
        return f"{path} is {size / 2**30:.1f} GiB, over the 2 GiB one ONNX protobuf can hold"
    return None


def external_tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of the model whose data lives in another file: initializers and attributes, subgraphs included."""
    graphs = [proto.graph]
    while graphs:
        graph = graphs.pop()
        tensors = list(graph.initializer) + [s.values for s in graph.sparse_initializer]
        for node in graph.node:
            for attribute in node.attribute:
                tensors += ([attribute.t] if attribute.HasField("t") else []) + list(attribute.tensors)
                graphs += ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs)
        yield from (t for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL)


def external_data_problem(proto: onnx.ModelProto) -> str | None:
    """An external-data location that leaves the model's folder (absolute, a drive, or through ..):
    loading it would read any file the worker can read. None when every location stays beside the model."""
    for tensor in external_tensors(proto):
        location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
        parts = PurePosixPath(location.replace("\\", "/"))
        if not location or parts.is_absolute() or ".." in parts.parts or re.match(r"^[A-Za-z]:", location):
            return (f"tensor {tensor.name!r} keeps its data at {location!r}, outside the model's folder: "
                    "refused (external data must sit beside the .onnx file)")
    return None


def external_data_files(path: Path) -> list[Path]:
    """The files beside an ONNX model that hold its external data, as the model names them (each once,
    in a stable order); locations that leave the model's folder are not listed (they are refused)."""
    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - a file that does not parse: the export stage reports it
        return []
    if external_data_problem(proto):
        return []
    locations = {entry.value for tensor in external_tensors(proto) for entry in tensor.external_data if entry.key == "location"}
    return [path.parent / location for location in sorted(locations)]


def _read_onnx_file(model: ModelRef) -> bytes:
    """The model as one self-contained ONNX file: external data beside it is read in (the store keeps
    one file); external data anywhere else is refused."""
    path = Path(model.source)
    problem = onnx_file_problem(path)
    if problem:
        raise ModelSourceError(f"model {model.name}: ONNX file {problem}")
    data = path.read_bytes()
    try:
        proto = onnx.load_from_string(data)
    except Exception:  # noqa: BLE001 - not ONNX at all: _check says so, with the parser's reason
        return data
    problem = external_data_problem(proto)
    if problem:
        raise ModelSourceError(f"model {model.name}: {problem}")
    if next(external_tensors(proto), None) is None:
        return data
    from onnx.external_data_helper import load_external_data_for_model

    load_external_data_for_model(proto, str(path.parent))
    return proto.SerializeToString()


def _to_onnx(module: Any, model: ModelRef) -> bytes:
    import torch

    sample = torch.randn(1, *model.input_shape)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated upstream but is the one that exports detectors
        # (Faster R-CNN) and writes one self-contained file; the warning is noise here.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (sample,),
            buffer,
            input_names=["input"],
            output_names=_output_names(module, sample),
            opset_version=model.opset,
            # A torchvision detector's graph handles one image per call: its batch axis stays 1.
            dynamic_axes=None if model.task == "detection" else {"input": {0: BATCH_AXIS}},
            dynamo=False,
        )
    return buffer.getvalue()


def _output_names(module: Any, sample: Any) -> list[str]:
    import torch

    with torch.no_grad():
        out = module(sample)
    if isinstance(out, torch.Tensor):
        return ["output"]
    if isinstance(out, list | tuple) and out and isinstance(out[0], dict):
        return list(out[0])  # torchvision detectors: boxes, labels, scores
    return [f"output_{i}" for i in range(len(out))] if isinstance(out, list | tuple) else ["output"]


def _check(data: bytes, model: ModelRef) -> onnx.ModelProto:
    try:
        proto = onnx.load_from_string(data)
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise ModelSourceError(f"model {model.name}: not a valid ONNX model ({type(exc).__name__}: {exc})") from exc
    problem = external_data_problem(proto)  # bytes that came from the store are checked as well
    if problem:
        raise ModelSourceError(f"model {model.name}: {problem}")
    return proto


def _opset(proto: onnx.ModelProto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _tensor_specs(values: Any, exclude: frozenset[str] | set[str] = frozenset()) -> list[TensorSpec]:
    specs = []
    for value in values:
        if value.name in exclude:
            continue
        tensor_type = value.type.tensor_type
        shape = tuple(d.dim_param or d.dim_value if (d.dim_param or d.dim_value) else "?" for d in tensor_type.shape.dim)
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).name
        specs.append(TensorSpec(value.name, shape, dtype))
    return specs
