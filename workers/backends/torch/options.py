"""What one PyTorch engine is made of: its kind, precision and Inductor options, checked once.

Plain data with no torch import: the planner, the manifest and every other module of the
torch backend read it, so it sits below them all (workers.backends.torch.engines runs it,
workers.backends.torch.quant and .compile_cache only need device_type).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

KINDS = ("eager", "cuda_graph", "compile", "aoti")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# torchao quantization applied to the prepared module (workers.backends.torch.quant); fp8 needs compute capability >= 8.9
QUANTIZE = ("int8_dynamic", "int8_weight_only", "fp8_rowwise", "fp8_tensorwise")
PRECISIONS = ("fp32", "fp16", "bf16")


def one_of(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} {value!r}: expected one of {', '.join(allowed)}")


def device_type(device: str) -> str:
    """'cuda' for 'cuda' / 'cuda:1', 'cpu' for 'cpu'; without importing torch."""
    kind = device.split(":", 1)[0]
    one_of("device", kind, ("cpu", "cuda"))
    return kind


@dataclass(frozen=True)
class TorchEngineOptions:
    """How one PyTorch engine is made; stored in the engine's manifest, so every field is plain data."""

    kind: str = "eager"
    precision: str = "fp32"  # the module and its inputs are cast; outputs come back as float32
    compile_mode: str | None = None  # kind compile only; None means torch.compile's "default"
    channels_last: bool = False  # NHWC for 4-D weights and inputs: what tensor-core convolutions want
    tf32: bool = False  # fp32 on CUDA only; False also turns off cuDNN's TF32 convolutions (torch's default is on)
    cudnn_benchmark: bool = True  # CUDA: time cuDNN's algorithms per shape on the first call, as TensorRT does
    # Inductor's inference options (kind compile only). Freezing folds weights, batch norm and constants
    # into the graph: on ResNet-50 fp16 it took max-autotune from 1.53x to 1.81x plain PyTorch's CUDA graph.
    freezing: bool = False
    coordinate_descent: bool | None = None  # None: the mode's own choice (max-autotune turns it on)
    quantize: str | None = None  # one of QUANTIZE, applied by torchao after the cast

    def __post_init__(self) -> None:
        one_of("kind", self.kind, KINDS)
        one_of("precision", self.precision, PRECISIONS)
        if self.compile_mode is not None:
            if self.kind != "compile":
                raise ValueError(f"compile_mode is only for kind compile, not {self.kind}")
            one_of("compile_mode", self.compile_mode, COMPILE_MODES)
        if self.tf32 and self.precision != "fp32":
            raise ValueError(f"tf32 applies to fp32 only, not {self.precision}")
        for name in ("channels_last", "tf32", "cudnn_benchmark", "freezing"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} {getattr(self, name)!r}: expected true or false")
        if self.coordinate_descent is not None and not isinstance(self.coordinate_descent, bool):
            raise ValueError(f"coordinate_descent {self.coordinate_descent!r}: expected true or false")
        if (self.freezing or self.coordinate_descent is not None) and self.kind != "compile":
            raise ValueError(f"freezing and coordinate_descent are Inductor options: kind compile only, not {self.kind}")
        if self.quantize is not None:
            one_of("quantize", self.quantize, QUANTIZE)
            if self.kind == "aoti":
                raise ValueError("quantize applies to kinds eager, cuda_graph and compile, not aoti")
            if self.quantize.startswith("fp8") and self.precision != "bf16":
                raise ValueError(f"quantize {self.quantize} computes in bf16 (torchao float8): give precision bf16, not {self.precision}")

    @property
    def mode(self) -> str:
        return self.compile_mode or "default"

    @property
    def label(self) -> str:
        """Short text for tables: 'compile:max-autotune fp16 channels_last freezing'."""
        kind = f"compile:{self.mode}" if self.kind == "compile" else self.kind
        flags = [f for f, on in (("channels_last", self.channels_last), ("tf32", self.tf32), ("freezing", self.freezing),
                                 ("coordinate_descent", self.coordinate_descent), ("no_coordinate_descent", self.coordinate_descent is False)) if on]
        return " ".join([kind, self.precision, *([self.quantize] if self.quantize else []), *flags])

    def inductor_options(self) -> dict[str, Any]:
        """torch.compile's `options` for this engine: the mode's own, plus coordinate descent.

        torch.compile takes a mode or options, not both, so the mode is spelled out as its options
        (torch._inductor.list_mode_options) whenever an option is added to it. Freezing is not one
        of them: see inductor_config.
        """
        from torch._inductor import list_mode_options

        options = dict(list_mode_options(self.mode, dynamic=False))
        if self.coordinate_descent is not None:
            options["coordinate_descent_tuning"] = self.coordinate_descent
        return options

    @property
    def inductor_config(self) -> dict[str, Any]:
        """Inductor config to hold (torch._inductor.config.patch) while the engine compiles: freezing.

        Given in torch.compile's options, freezing is silently not applied: Dynamo reads
        torch._inductor.config.freezing itself when it traces, before the options are patched in
        (pytorch/pytorch#139272). So it must be set around the calls that compile. Measured on an
        H100, ResNet-50 fp16 batch 256: 11.38 ms a batch with it in the options, 10.35 ms frozen.
        """
        return {"freezing": True} if self.freezing else {}

    @property
    def uses_cudagraphs(self) -> bool:
        """Whether a compiled engine replays CUDA graphs (cudagraph trees)."""
        return self.kind == "compile" and self.mode in ("reduce-overhead", "max-autotune")

    def check_device(self, device: str) -> None:
        """Options that cannot run on `device` are an error before anything is built."""
        if device_type(device) != "cuda":
            if self.kind == "cuda_graph":
                raise ValueError(f"kind cuda_graph needs a CUDA device, not {device}")
            if self.tf32:
                raise ValueError(f"tf32 needs a CUDA device, not {device}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> TorchEngineOptions:
        known = set(TorchEngineOptions.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"torch engine option {unknown[0]!r}: expected one of {', '.join(sorted(known))}")
        return TorchEngineOptions(**dict(data))


def engine_options(options: dict[str, Any], precision: str) -> TorchEngineOptions:
    """The spec's option axes (kind, compile_mode, channels_last, tf32) as the engine's options."""
    given = dict(options)
    if "mode" in given:  # the first name of `kind`, from specs written before the engine kinds
        given.setdefault("kind", given.pop("mode"))
    if given.get("compile_mode") in (None, "default") and given.get("kind") == "compile":
        given["compile_mode"] = None
    elif given.get("kind") != "compile":
        given.pop("compile_mode", None)
    return TorchEngineOptions.from_dict(given | {"precision": precision})
