"""The sweep spec's schema: its pydantic models, the validators of their fields, and the bounds they hold.

A spec is models x precisions x backends (each with its own option axes) x targets x batch
sizes. Reading a file into these models is farm.run.spec.loading; checking the files it names
and what it would cost is farm.run.spec.checks.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PositiveFloat,
    Field,
    ValidationInfo,
    computed_field,
    field_validator,
    model_validator,
)

from pydantic_core import PydanticCustomError

from farm.results.metrics import TIMED_OBJECTIVES
from farm.results.prices import Prices, PricesError
from workers.bench import BenchSettings
from workers.structs import ModelRef, Preprocess

# Bounds checked before any work, so that a typo costs one line, not a killed worker or a hung driver.
MAX_BATCH = 65536  # the largest batch size a spec may ask for
MAX_NAME = 100  # characters of a sweep or model name: names become folder and file names
MAX_SIDE = 8192  # pixels of a preprocessing resize or crop: the driver resizes every photo to it
MAX_SAMPLES = 1_000_000  # calibration or fidelity rows


def _listify(value: Any) -> Any:
    """An axis may be written as one value or as a list of values."""
    return value if isinstance(value, list) else [value]


def _not_bool(value: Any) -> Any:
    """YAML's true/false are ints to pydantic (true == 1): a count or a size must be written as a number."""
    if isinstance(value, bool):
        raise ValueError("expected an integer, not true/false")
    return value


def _file_name(value: str) -> str:
    """Names become folders (`farm pull`, `farm deliver triton`): "." and ".." would write outside them."""
    if value in (".", ".."):
        raise ValueError(f"{value!r} cannot be a name: names become folder names")
    return value


def _number_as_text(value: Any) -> Any:
    """`version: 2` in YAML is a number; it names a version all the same."""
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


Int = Annotated[int, BeforeValidator(_not_bool)]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=MAX_NAME), AfterValidator(_file_name)]
BatchSize = Annotated[Int, Field(ge=1, le=MAX_BATCH)]


def _one_of(choices: tuple[str, ...]) -> BeforeValidator:
    """One of `choices`, refused in the words pydantic uses for a Literal: the choices live in a tuple
    elsewhere (farm.results.metrics), and the error text stays the one a Literal gave."""
    expected = " or ".join(filter(None, (", ".join(map(repr, choices[:-1])), repr(choices[-1]))))

    def check(value: Any) -> Any:
        if not isinstance(value, str) or value not in choices:
            raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})
        return value

    return BeforeValidator(check)


Objective = Annotated[str, _one_of(TIMED_OBJECTIVES)]


def _blocks(value: Any) -> Any:
    """A backend is one block of option axes or a list of them; an empty mapping is one default block."""
    return [value] if isinstance(value, dict) else value


class Strict(BaseModel):
    # inf and nan are never meant: a duration of .inf never ends, and nan fails every comparison silently
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class PreprocessSpec(Strict):
    """How images become this model's input: resize the short side, centre-crop, normalise."""

    resize: Int = Field(ge=1, le=MAX_SIDE)
    crop: Int = Field(ge=1, le=MAX_SIDE)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    # Every image is divided by it: a zero would make every preprocessed image Inf or NaN.
    std: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = (0.229, 0.224, 0.225)


RTX_TARGET = re.compile(r"^rtx:sm_\d{2,3}(\+sm_\d{2,3})*$")
MODEL_SOURCE = re.compile(r"^(torchvision:[A-Za-z0-9_]+|.+\.onnx|[A-Za-z_][\w.]*:[A-Za-z_]\w*)$")


UNSET_WEIGHTS = "\0unset"  # no `weights:` key: an error for torchvision sources, None for the others


class ModelSpec(Strict):
    name: Name
    source: str = Field(max_length=4096)
    # torchvision sources only, and there required, even as null: offline machines must ask for random
    # weights explicitly, so a missing download never turns silently into an untrained model. A
    # factory or an .onnx file carries its own weights.
    weights: str | None = Field(UNSET_WEIGHTS, max_length=64, validate_default=True)
    input_shape: tuple[Int, ...] = Field((3, 224, 224), max_length=8)
    opset: Int = Field(17, ge=13, le=21)
    # detection: torchvision-style detectors (boxes, labels, scores per image); fidelity is box agreement
    task: Literal["classification", "detection"] = "classification"
    kwargs: dict[str, Any] = {}  # for the torchvision builder or the factory: {box_score_thresh: 0.01}
    # Default: the torchvision weights' own transforms, else ImageNet's recipe scaled to input_shape.
    # A factory's model states its preprocessing here.
    preprocess: PreprocessSpec | None = None
    # The batch sizes this model runs at, where not the sweep's (a torchvision detector takes one image)
    batch_sizes: Annotated[list[BatchSize], BeforeValidator(_listify), Field(min_length=1)] | None = None
    # Part of the export's key: bump it when the model changes in a way no file farm hashes shows
    # (weights a factory downloads, data it reads).
    version: Annotated[str, BeforeValidator(_number_as_text), Field(min_length=1, max_length=64)] | None = None

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        if not MODEL_SOURCE.match(value):
            raise ValueError("expected torchvision:NAME, a path ending in .onnx, or package.module:function")
        return value

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: str | None, info: ValidationInfo) -> str | None:
        torchvision = str(info.data.get("source", "")).startswith("torchvision:")
        if value == UNSET_WEIGHTS:
            if torchvision:
                raise PydanticCustomError("missing", "required field is missing")
            return None
        if value is not None and not torchvision:
            raise ValueError("applies to torchvision sources only (a factory or an .onnx file carries its own weights): leave it out")
        return value

    @field_validator("input_shape")
    @classmethod
    def _shape(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(d <= 0 for d in value):
            raise ValueError("expected positive dimensions of one sample, without the batch axis, e.g. [3, 224, 224]")
        return value

    def ref(self, base: Path) -> ModelRef:
        source = self.source
        if source.endswith(".onnx") and not Path(source).is_absolute():
            source = str((base / source).resolve())
        return ModelRef(self.name, source, self.weights, tuple(self.input_shape), self.opset, task=self.task,
                        kwargs=tuple(sorted(self.kwargs.items())))

    def preprocessing(self) -> Preprocess:
        if self.preprocess is not None:
            return Preprocess(self.preprocess.resize, self.preprocess.crop, self.preprocess.mean, self.preprocess.std)
        if self.source.startswith("torchvision:") and self.weights is not None and self.task == "classification":
            from_weights = _torchvision_preprocess(self.source.split(":", 1)[1], self.weights)
            if from_weights is not None:
                return from_weights
        crop = self.input_shape[-1]
        return Preprocess(resize=round(crop * 256 / 224), crop=crop)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def preprocess_used(self) -> dict[str, Any]:
        """The preprocessing this model's inputs get, resolved: stored with the sweep, so that bundles and
        `farm best --json` can say how to feed a delivered engine (farm.results.queries.model_provenance)."""
        used = self.preprocessing()
        return {"resize": used.resize, "crop": used.crop, "mean": list(used.mean), "std": list(used.std)}


def _torchvision_preprocess(arch: str, weights: str) -> Preprocess | None:
    """The resize, crop and normalisation torchvision publishes with a weights entry."""
    try:
        import torchvision

        entry = torchvision.models.get_model_weights(arch)
        chosen = entry.DEFAULT if weights == "DEFAULT" else entry[weights]
        transforms = chosen.transforms()
        return Preprocess(int(transforms.resize_size[0]), int(transforms.crop_size[0]),
                          tuple(transforms.mean), tuple(transforms.std))  # type: ignore[arg-type]
    except (KeyError, AttributeError, ValueError):
        return None  # unknown weights are reported by the export stage, with the known names


BatchSizes = Annotated[list[BatchSize], BeforeValidator(_listify), Field(min_length=1)]  # [] would time nothing


Precision = Literal["fp32", "fp16", "bf16", "int8", "fp8"]
SCOPE = ("batch_sizes", "precisions", "models")  # what narrows a block of axes, not options of its builds


class Axes(Strict):
    """A backend's option axes; every combination is a build. `batch_sizes` and `precisions` narrow
    this block (a slow engine kind only where it can matter); default the sweep's."""

    batch_sizes: BatchSizes | None = None
    precisions: Annotated[list[Precision], BeforeValidator(_listify)] | None = None
    models: Annotated[list[Name], BeforeValidator(_listify)] | None = None  # model names; default every model

    def combinations(self) -> list[dict[str, Any]]:
        """Every combination of the option axes, in a stable order."""
        return option_grid(self)

    def takes(self, model: str, precision: str) -> bool:
        return (self.precisions is None or precision in self.precisions) and (self.models is None or model in self.models)


class OnnxRuntimeAxes(Axes):
    intra_op_threads: Annotated[list[Annotated[Int, Field(ge=0, le=4096)]], BeforeValidator(_listify)] = [0]
    graph_optimization_level: Annotated[
        list[Literal["disable", "basic", "extended", "all"]], BeforeValidator(_listify)
    ] = ["all"]


TorchKind = Literal["eager", "cuda_graph", "compile", "aoti"]
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


class TorchAxes(Axes):
    """PyTorch engine kinds (workers/backends/torch/): eager, CUDA graph replay, torch.compile, AOTInductor."""

    kind: Annotated[list[TorchKind], BeforeValidator(_listify)] = ["eager"]
    compile_mode: Annotated[list[CompileMode], BeforeValidator(_listify)] = ["default"]  # kind compile only
    channels_last: Annotated[list[bool], BeforeValidator(_listify)] = [False]
    tf32: Annotated[list[bool], BeforeValidator(_listify)] = [False]  # fp32 on a GPU only
    # Inductor's inference options, kind compile only: freezing folds weights and batch norm into the graph;
    # coordinate descent tunes Triton kernels' block sizes (null: the compile mode's own choice).
    freezing: Annotated[list[bool], BeforeValidator(_listify)] = [False]
    coordinate_descent: Annotated[list[bool | None], BeforeValidator(_listify)] = [None]
    # torchao on the module's linear layers (workers/backends/torch/quant.py); fp8 on GPUs of compute capability >= 8.9, in bf16
    quantize: Annotated[list[Literal["int8_dynamic", "int8_weight_only", "fp8_rowwise", "fp8_tensorwise"] | None],
                        BeforeValidator(_listify)] = [None]

    @model_validator(mode="before")
    @classmethod
    def _mode_is_kind(cls, data: Any) -> Any:
        """`mode` was the first name of `kind` (when eager was the only one): specs that say it still run."""
        if isinstance(data, dict) and "mode" in data:
            data = dict(data)
            if "kind" in data:
                raise ValueError("give kind, not both mode and kind (mode is its old name)")
            data["kind"] = data.pop("mode")
        return data


class TensorRTAxes(Axes):
    flavour: Annotated[list[Literal["auto", "datacenter", "rtx"]], BeforeValidator(_listify)] = ["auto"]
    workspace: Annotated[list[Annotated[int | str, BeforeValidator(_not_bool)]], BeforeValidator(_listify)] = ["unlimited"]  # bytes, "64MiB", "1GiB", "unlimited"
    optimization_level: Annotated[list[Annotated[Int, Field(ge=0, le=5)]], BeforeValidator(_listify)] = [3]
    hardware_compatibility_level: Annotated[
        list[Literal["none", "ampere_plus", "same_compute_capability"]], BeforeValidator(_listify)
    ] = ["none"]
    cuda_graph: Annotated[list[bool], BeforeValidator(_listify)] = [False]

    @field_validator("workspace")
    @classmethod
    def _sizes(cls, sizes: list[int | str]) -> list[int | str]:
        from workers.backends.tensorrt import parse_bytes

        for size in sizes:
            parse_bytes(size)  # raises ValueError with the expected forms
        return sizes


class Backends(Strict):
    """Each backend: one block of option axes, or a list of blocks (say, cheap kinds at every batch
    size and an expensive one at the largest)."""

    onnxruntime: Annotated[list[OnnxRuntimeAxes], BeforeValidator(_blocks)] | None = None
    torch: Annotated[list[TorchAxes], BeforeValidator(_blocks)] | None = None
    tensorrt: Annotated[list[TensorRTAxes], BeforeValidator(_blocks)] | None = None

    def enabled(self) -> dict[str, list[Axes]]:
        return {name: list(blocks) for name in type(self).model_fields if (blocks := getattr(self, name)) is not None}

    @model_validator(mode="after")
    def _some(self) -> Backends:
        if not self.enabled():
            raise ValueError("expected at least one backend (onnxruntime, torch, tensorrt)")
        return self


class BenchmarkSpec(Strict):
    """trtexec's warm-up, minimum duration and count; perf_analyzer's stability windows; a time cap."""

    warmup_s: float = Field(0.2, ge=0)
    duration_s: float = Field(1.0, ge=0)  # at least this long timed
    min_iterations: Int = Field(10, ge=1, le=10_000_000)
    max_iterations: Int | None = Field(None, ge=1, le=10_000_000)
    window_s: float = Field(0.5, gt=0)  # one stability window
    stable_windows: Int = Field(3, ge=1, le=1000)  # the last N windows' medians must agree...
    stability: float = Field(0.05, gt=0, lt=1)  # ...within this fraction of their mean
    max_duration_s: float = Field(10.0, gt=0)  # stop, unconverged, after this long
    data_transfers: bool = True  # GPU: copy inputs in and outputs out every iteration; false = trtexec --noDataTransfers

    @model_validator(mode="after")
    def _cap_covers_the_minimum(self) -> BenchmarkSpec:
        if self.max_duration_s < self.duration_s:
            raise ValueError(f"max_duration_s {self.max_duration_s} is below duration_s {self.duration_s}")
        return self

    def settings(self) -> BenchSettings:
        return BenchSettings(self.warmup_s, self.duration_s, self.min_iterations, self.max_iterations, self.window_s,
                             self.stable_windows, self.stability, self.max_duration_s, self.data_transfers)


def _resolve(base: Path, path: str) -> Path:
    """Paths in a spec start at the spec's folder."""
    resolved = Path(path)
    return resolved if resolved.is_absolute() else base / resolved


class Fp16Spec(Strict):
    keep_io_types: bool = True  # fp32 inputs and outputs, with casts at the edges
    op_block_list: list[str] = []  # op types kept in fp32, added to the converter's own list
    node_block_list: list[str] = []  # node names kept in fp32


class CalibrationSpec(Strict):
    """INT8 / FP8 calibration: once per (model, method, data, sample count), reused by every build."""

    data: str = "calibration_data"  # a folder of images, an .npy/.npz of preprocessed inputs, or a folder of .npy
    samples: Int = Field(16, ge=1, le=MAX_SAMPLES)  # taken from the front of the data; fidelity never sees them
    methods: Annotated[list[Literal["minmax", "entropy", "percentile", "distribution"]], BeforeValidator(_listify)] = ["minmax", "percentile"]
    percentile: float = Field(99.999, gt=50, le=100)

    def folder(self, base: Path) -> Path:
        return _resolve(base, self.data)


class FallbackSpec(Strict):
    """Automatic precision fallback: keep the most sensitive tensors in float until the variant passes."""

    enabled: bool = True
    max_tries: Int = Field(8, ge=1, le=50)
    # More than this share of the quantizable activations kept in float is not a rescue: the variant fails.
    max_float_fraction: float = Field(0.25, gt=0, le=1)


class FidelitySpec(Strict):
    data: str | None = None  # default: the calibration data, its held-out end
    samples: Int = Field(16, ge=1, le=MAX_SAMPLES)  # held out: the last N samples, never a calibration sample
    labels: str | None = None  # optional file,label CSV with integer class ids: labelled accuracy
    # Constraints a build must meet to win, like Model Analyzer's: any of them, on the held-out rows.
    min_top1_agreement: float = Field(0.99, ge=0, le=1)  # detectors: the floor on box recall
    min_cosine: float | None = Field(None, ge=-1, le=1)  # mean cosine similarity of outputs with fp32
    max_accuracy_drop: float | None = Field(None, ge=0, le=1)  # labelled top-1 accuracy below fp32's (labels needed)
    box_score_threshold: float = Field(0.5, ge=0, le=1)  # detectors: boxes below it are not compared
    # How min_top1_agreement is read (docs/verdicts.md): "evidence" (no confident flips, and the 95% Wilson
    # upper bound reaches the floor or the disagreement is within fp32's own noise floor) or "threshold" (the bare share).
    eligibility: Literal["evidence", "threshold"] = "evidence"
    confident_margin: float = Field(0.1, ge=0, le=1)  # a flip where fp32's softmax p1 - p2 is at least this is confident
    fallback: FallbackSpec = FallbackSpec()

    def folder(self, base: Path, calibration: CalibrationSpec) -> Path:
        return _resolve(base, self.data) if self.data else calibration.folder(base)

    def labels_file(self, base: Path) -> Path | None:
        return _resolve(base, self.labels) if self.labels else None

    def constraints(self) -> dict[str, Any]:
        """The floors a winner must meet and the rule that reads them, by name (farm.results.select.Constraints)."""
        found = {"min_top1_agreement": self.min_top1_agreement, "min_cosine": self.min_cosine,
                 "max_accuracy_drop": self.max_accuracy_drop, "rule": self.eligibility, "confident_margin": self.confident_margin}
        return {name: value for name, value in found.items() if value is not None}


class RetimeSpec(Strict):
    """Re-time each group's leading builds interleaved on one node before declaring a winner."""

    enabled: bool = True
    reach: float = Field(0.10, ge=0, le=10)  # builds within this fraction of the leader's p50 are re-timed with it
    max_candidates: Int = Field(3, ge=2, le=8)
    rounds: Int = Field(8, ge=4, le=16)  # 8 rounds: a paired sign-flip test can reach p = 0.008
    window_s: float = Field(0.15, gt=0)


class SelectionSpec(Strict):
    objective: Objective = "p50"  # what the sweep's verdicts rank by
    retime: RetimeSpec = RetimeSpec()


class LimitsSpec(Strict):
    job_timeout_s: float = Field(1800, gt=0)
    retries: Int = Field(1, ge=0, le=5)
    # A process forked per build (farm.run.isolated) contains native crashes and leaks, at about 0.2 s a build
    # (the fork, a fresh heap, the model and engine bytes in and out); turn off for many small builds on backends you trust.
    isolate_builds: bool = True
    # How long a ready timing lets its host run other ready work before the host takes no more
    # (farm.run.schedule.Placement): timings taken in a row cost one drain of the host, not one each.
    timing_patience_s: float = Field(300, ge=0)
    # The most one batch may need, estimated as input values x batch x 4 bytes x ACTIVATION_FACTOR:
    # a shape or batch size past it is refused before any work (a worker killed for memory says little).
    memory_gib: float = Field(16, gt=0, le=65536)


class SweepSpec(Strict):
    name: Name
    models: list[ModelSpec] = Field(min_length=1)
    # bf16: PyTorch engines only (the module is cast); fp16 reaches ONNX engines as a converted graph
    precisions: Annotated[list[Precision], BeforeValidator(_listify)] = ["fp32"]
    batch_sizes: BatchSizes = [1]
    backends: Backends
    # Empty: every CPU and GPU target in the cluster. TensorRT-RTX targets are built ahead of time
    # on CPU workers and are only made when named: "rtx:sm_89", or "rtx:sm_86+sm_89" for one
    # engine that runs on both.
    targets: Annotated[list[Annotated[str, Field(min_length=1, max_length=256)]], BeforeValidator(_listify)] = []
    benchmark: BenchmarkSpec = BenchmarkSpec()
    fp16: Fp16Spec = Fp16Spec()
    calibration: CalibrationSpec = CalibrationSpec()
    fidelity: FidelitySpec = FidelitySpec()
    selection: SelectionSpec = SelectionSpec()
    limits: LimitsSpec = LimitsSpec()
    # USD per hour per GPU kind and per CPU core (farm.results.prices), over farm's default table: answers price with them
    prices: dict[str, Any] | None = None

    @field_validator("prices")
    @classmethod
    def _readable_prices(cls, prices: dict[str, Any] | None) -> dict[str, Any] | None:
        if prices is not None:
            try:
                Prices.parse(prices, "prices")
            except PricesError as error:
                raise ValueError(str(error).removeprefix("prices: ")) from None
        return prices

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelSpec]) -> list[ModelSpec]:
        names = [m.name for m in models]
        if duplicate := next((n for n in names if names.count(n) > 1), None):
            raise ValueError(f"model names must be unique; {duplicate!r} appears twice")
        return models

    def needs_calibration(self) -> bool:
        return any(p in ("int8", "fp8") for p in self.precisions)

    @field_validator("targets")
    @classmethod
    def _rtx_targets(cls, targets: list[str]) -> list[str]:
        for target in targets:
            if target.startswith("rtx:") and not RTX_TARGET.match(target):
                raise ValueError(f"{target!r}: expected rtx:sm_NN or rtx:sm_NN+sm_MM (e.g. rtx:sm_89)")
        return targets

    def rtx_targets(self) -> list[str]:
        return [t.removeprefix("rtx:") for t in self.targets if t.startswith("rtx:")]

    @field_validator("batch_sizes")
    @classmethod
    def _batches(cls, sizes: list[int]) -> list[int]:
        return sorted(set(sizes))


def option_grid(axes: BaseModel) -> list[dict[str, Any]]:
    """Every combination of a backend's option axes, in a stable order (a block's batch sizes are not an option)."""
    names = [n for n in type(axes).model_fields if n not in SCOPE]
    values = [getattr(axes, n) for n in names]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*values)]

