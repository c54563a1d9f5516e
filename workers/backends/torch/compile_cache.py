"""torch.compile's caches as one portable blob, kept like a TensorRT timing cache.

A process that compiled saves what Inductor cached (generated graphs, AOTAutograd entries,
autotuning results; on CUDA the Triton binaries come bundled in the graph entries); a fresh
process that loads the blob before compiling finds those entries and skips the lowering,
the codegen and max-autotune's benchmarking. The farm keeps one blob per compile_cache_key().

On a CPU the C++ kernels are not in the blob: g++ still runs in the warm process
(benchmarks/torch_compile_cache.py measures both).
"""

from __future__ import annotations

from workers.backends.torch.options import device_type


def export_compile_caches() -> bytes | None:
    """Everything torch.compile cached in this process so far, including entries it imported; None if nothing."""
    import torch

    saved = torch.compiler.save_cache_artifacts()
    return None if saved is None else saved[0]


def import_compile_caches(blob: bytes) -> dict[str, int]:
    """Load a blob from export_compile_caches into this process's caches; the artifacts per cache kind."""
    import torch

    info = torch.compiler.load_cache_artifacts(blob)
    return {} if info is None else {kind: len(keys) for kind, keys in info.artifacts.items()}


def compile_cache_key(device: str) -> dict[str, str]:
    """What a blob depends on: torch and Triton versions, and the GPU model and compute capability on CUDA."""
    import torch

    key = {"torch": str(torch.__version__), "device": device_type(device)}
    if key["device"] == "cuda":
        index = torch.device(device).index
        props = torch.cuda.get_device_properties(torch.cuda.current_device() if index is None else index)
        key |= {"gpu": props.name, "compute_capability": f"{props.major}.{props.minor}"}
        try:
            import triton

            key["triton"] = triton.__version__
        except ImportError:
            pass
    return key
