"""Small typed records that cross the seam between the driver and the workers.

Everything a worker returns is one of these plus artifact bytes; every backend describes
its tensors with the same TensorSpec and its engines with the same Manifest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

Dim = int | str  # a symbolic name ("batch") for a dynamic axis


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[Dim, ...]
    dtype: str  # numpy dtype name: "float32", "float16", "int64", ...

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @staticmethod
    def from_json(data: dict[str, Any]) -> TensorSpec:
        return TensorSpec(data["name"], tuple(data["shape"]), data["dtype"])


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
    def from_json(data: dict[str, Any]) -> Manifest:
        fields = dict(data)
        fields["inputs"] = [TensorSpec.from_json(t) for t in data["inputs"]]
        fields["outputs"] = [TensorSpec.from_json(t) for t in data["outputs"]]
        return Manifest(**fields)


@dataclass
class Engine:
    """A built engine: the bytes a runner opens, its manifest and the builder's log."""

    data: bytes
    manifest: Manifest
    log: str = ""
    seconds: float = 0.0
    peak_host_memory_bytes: int | None = None
    builder_cache: bytes | None = None  # what the next build on this target may start from (BuildContext.caches)
