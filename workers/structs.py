"""Small typed records that cross the seam between the driver and the workers.

Everything a worker returns is one of these plus artifact bytes; every backend describes
its tensors with the same TensorSpec and its engines with the same Manifest.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

Dim = int | str  # a symbolic name ("batch") for a dynamic axis


class ManifestError(ValueError):
    """A manifest (or tensor description) that is not one: str() is one line saying which field is wrong.
    Manifests come back from stores and bundles, so they are read as untrusted JSON."""


def _expect(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise ManifestError(f"{where}: expected {names}, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[Dim, ...]
    dtype: str  # numpy dtype name: "float32", "float16", "int64", ...

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @staticmethod
    def from_json(data: Any, where: str = "tensor") -> TensorSpec:
        _expect(data, dict, where)
        missing = [k for k in ("name", "shape", "dtype") if k not in data]
        if missing:
            raise ManifestError(f"{where}: missing {', '.join(missing)}")
        shape = _expect(data["shape"], list, f"{where}.shape")
        dims = tuple(_expect(d, (int, str), f"{where}.shape[{i}]") for i, d in enumerate(shape))
        return TensorSpec(_expect(data["name"], str, f"{where}.name"), dims, _expect(data["dtype"], str, f"{where}.dtype"))


@dataclass(frozen=True)
class Preprocess:
    """How a folder of images becomes a model input (torchvision's classification recipe)."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelRef:
    """Where a network comes from, as the driver resolved it from the sweep spec."""

    name: str
    source: str  # "torchvision:resnet18", "path/to/model.onnx" or "package.module:function"
    weights: str | None  # torchvision weights name ("DEFAULT", "IMAGENET1K_V1") or None for random init
    input_shape: tuple[int, ...]  # one sample, without the batch axis: (3, 224, 224)
    opset: int = 17
    seed: int = 0
    task: str = "classification"  # or "detection": outputs are boxes, labels, scores per image
    kwargs: tuple[tuple[str, Any], ...] = ()  # passed to the torchvision builder or the factory (box_score_thresh=...)

    @property
    def kind(self) -> str:
        if self.source.startswith("torchvision:"):
            return "torchvision"
        if self.source.endswith(".onnx"):
            return "onnx"
        return "factory"


@dataclass(frozen=True)
class Target:
    """Where an engine runs: a CPU kind, a GPU kind, or an ahead-of-time TensorRT-RTX compute capability."""

    kind: str  # "cpu" | "gpu" | "rtx"
    name: str  # CPU model, GPU name, or "sm_89"
    compute_capability: str | None = None  # "9.0" for GPUs and RTX targets

    @property
    def id(self) -> str:
        if self.kind == "cpu":
            return f"cpu:{self.name}"
        if self.kind == "gpu":
            return f"{self.name} / sm_{(self.compute_capability or '').replace('.', '')}"
        return f"rtx:{self.name}"


@dataclass(frozen=True)
class ExportInfo:
    opset: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    node_count: int
    seconds: float
    torch_version: str | None


@dataclass(frozen=True)
class BuildRequest:
    model: ModelRef
    precision: str
    backend: str
    options: dict[str, Any]
    target: Target
    batch_sizes: tuple[int, ...]  # the engine must run every one of these
    # What the variant is beyond its precision (calibration method, int8 layout, share of activations
    # still quantized); known once the variant job ran, recorded in the manifest.
    variant: dict[str, Any] = field(default_factory=dict)


@dataclass
class Manifest:
    """What an engine is, enough to run it again and to trust it: stored beside every engine."""

    backend: str
    backend_version: str
    target: str
    precision: str
    options: dict[str, Any]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    model: str
    variant_sha256: str
    engine_sha256: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["inputs"] = [t.to_json() for t in self.inputs]
        data["outputs"] = [t.to_json() for t in self.outputs]
        return data

    @staticmethod
    def from_json(data: Any) -> Manifest:
        """A Manifest from its JSON; anything else raises ManifestError (one line), never another exception."""
        _expect(data, dict, "manifest")
        known = {f.name: f for f in fields(Manifest)}
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise ManifestError(f"manifest: unknown field {unknown[0]!r}")
        missing = [name for name, f in known.items() if name not in data and f.default is MISSING and f.default_factory is MISSING]
        if missing:
            raise ManifestError(f"manifest: missing {', '.join(missing)}")
        values = dict(data)
        for name in ("backend", "backend_version", "target", "precision", "model", "variant_sha256", "engine_sha256"):
            if name in values:
                _expect(values[name], str, f"manifest.{name}")
        for name in ("options", "extra"):
            if name in values:
                _expect(values[name], dict, f"manifest.{name}")
        for name in ("inputs", "outputs"):
            values[name] = [TensorSpec.from_json(t, f"manifest.{name}[{i}]") for i, t in enumerate(_expect(values[name], list, f"manifest.{name}"))]
        return Manifest(**values)


@dataclass
class Engine:
    """A built engine: the bytes a runner opens, its manifest and the builder's log."""

    data: bytes
    manifest: Manifest
    log: str = ""
    seconds: float = 0.0
    peak_host_memory_bytes: int | None = None
    peak_device_memory_bytes: int | None = None  # this process's on the GPU it built on (GPU builds)
    builder_cache: bytes | None = None  # what the next build on this target may start from (BuildContext.caches)
