"""Low-precision PyTorch engines: torchao quantization of a prepared module (the torch backend's `quantize`).

| quantize | what torchao does to every nn.Linear | runs on |
| --- | --- | --- |
| int8_dynamic | int8 weights (per channel) and int8 activations quantized per token at run time | CPU and GPU |
| int8_weight_only | int8 weights, activations stay in the module's dtype | CPU and GPU |
| fp8_rowwise | float8 e4m3 weights and activations, one scale per row | GPUs of compute capability >= 8.9 |
| fp8_tensorwise | the same with one scale per tensor | GPUs of compute capability >= 8.9 |

Only linear layers are quantized (torchao's default filter): transformers gain, convolutional
networks keep their convolutions as they were. The engine stays a recipe (the checkpoint plus
these options): quantizing is cheap and deterministic, so a runner quantizes again where it runs.
Speed comes with torch.compile, which fuses the scaling into the matmuls; eager torchao is slow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from workers.backends.torch.options import device_type

if TYPE_CHECKING:
    import torch

FP8_MIN_CAPABILITY = (8, 9)  # Ada and Hopper have fp8 tensor cores; torch._scaled_mm refuses older GPUs


class QuantizeUnavailable(RuntimeError):
    """The quantization cannot run here: torchao missing, or a GPU without fp8."""


def check_quantize(quantize: str, device: str) -> None:
    """One line, before any work, where `quantize` cannot run on `device`."""
    if not quantize.startswith("fp8"):
        return
    if device_type(device) != "cuda":
        raise QuantizeUnavailable(f"quantize {quantize} needs a GPU of compute capability >= 8.9 (torchao float8), not {device}")
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < FP8_MIN_CAPABILITY:
        raise QuantizeUnavailable(f"quantize {quantize} needs compute capability >= 8.9 (torchao float8); "
                                  f"{torch.cuda.get_device_name(device)} has {major}.{minor}")


# What each choice calls, as the manifest's load recipe names it (torchao.quantization's classes).
RECIPES = {
    "int8_dynamic": "Int8DynamicActivationInt8WeightConfig()",
    "int8_weight_only": "Int8WeightOnlyConfig()",
    "fp8_rowwise": "Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())",
    "fp8_tensorwise": "Float8DynamicActivationFloat8WeightConfig(granularity=PerTensor())",
}


def _config(quantize: str) -> Any:
    try:
        from torchao.quantization import (
            Float8DynamicActivationFloat8WeightConfig,
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            PerRow,
            PerTensor,
        )
    except ImportError as exc:
        raise QuantizeUnavailable(f"quantize {quantize} needs torchao (pip install torchao): {exc}") from None
    configs = {
        "int8_dynamic": Int8DynamicActivationInt8WeightConfig,
        "int8_weight_only": Int8WeightOnlyConfig,
        "fp8_rowwise": lambda: Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
        "fp8_tensorwise": lambda: Float8DynamicActivationFloat8WeightConfig(granularity=PerTensor()),
    }
    return configs[quantize]()


def quantize_module(module: torch.nn.Module, quantize: str, device: str) -> torch.nn.Module:
    """Quantize `module` (already on `device`, in its dtype) in place; returns it. Raises QuantizeUnavailable."""
    check_quantize(quantize, device)
    from torchao.quantization import quantize_

    quantize_(module, _config(quantize))
    return module
