"""Which runner serves which engine kind: the one table open_engine reads.

It sits above `engines` (the module kinds) and `aoti`, so neither imports the other to find a
runner: a new kind is a runner class, a name in options.KINDS and a row here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from workers.backends.torch.aoti import AotiRunner
from workers.backends.torch.engines import (
    CompileRunner,
    CudaGraphRunner,
    EagerRunner,
    ModuleRunner,
    TorchEngineRunner,
    prepare_module,
)
from workers.backends.torch.options import TorchEngineOptions

if TYPE_CHECKING:
    import torch

RUNNERS: dict[str, type[TorchEngineRunner]] = {
    "eager": EagerRunner,
    "cuda_graph": CudaGraphRunner,
    "compile": CompileRunner,
    "aoti": AotiRunner,
}


def open_engine(
    engine: torch.nn.Module | bytes, options: TorchEngineOptions, device: str, input_shape: tuple[int, ...]
) -> TorchEngineRunner:
    """A runner for `engine`: a module for eager / cuda_graph / compile, package bytes for aoti.

    `input_shape` is one sample's, without the batch axis: the runner's feed is
    {"input": array of (batch, *input_shape)}. Modules go through prepare_module here (in
    place), so a runner never runs a module in other settings than its options say.
    """
    runner_type = RUNNERS[options.kind]
    if isinstance(engine, bytes | bytearray):
        if not issubclass(runner_type, AotiRunner):
            raise TypeError(f"kind {options.kind} runs a torch.nn.Module, not package bytes")
        return runner_type(bytes(engine), device, options, input_shape)
    if not issubclass(runner_type, ModuleRunner):
        raise TypeError(f"kind {options.kind} runs a package (AotiPackage.data from build_aoti_package), not a module")
    options.check_device(device)
    return runner_type(prepare_module(engine, options, device), options, device, input_shape)
