"""What a TensorRT build is asked for, and which TensorRT is here: options, flavours, versions.

`BuildOptions.parse` checks `request.options` before anything is built (one error per bad
value). The flavour's module is found without importing it (`installed_version`), and
imported only by `import_flavour`, which says how to install it when it is missing.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType
from typing import Any

from workers import cuda
from workers.backends.base import BackendUnavailable
from workers.structs import Target

NAME = "tensorrt"  # the backend's name in specs and manifests
TARGET_KINDS = ("gpu", "rtx")  # which Target.kind values it builds for
FLAVOURS = ("auto", "datacenter", "rtx")
MODULES = {"datacenter": "tensorrt", "rtx": "tensorrt_rtx"}
INSTALL = {"datacenter": "pip install 'farm[tensorrt]'", "rtx": "pip install 'farm[rtx]'"}
# Distributions that provide each module (the bindings wheel, or the meta package that pulls it).
DISTRIBUTIONS = {"datacenter": r"tensorrt(-cu\d+)?(-bindings)?", "rtx": r"tensorrt-rtx(-cu\d+)?(-bindings)?"}
OPTIONS = ("flavour", "workspace", "optimization_level", "compute_capabilities", "hardware_compatibility_level", "cuda_graph")
COMPATIBILITY_LEVELS = ("none", "ampere_plus", "same_compute_capability")
RTX_PLAN_MAGIC = b"vtrt"  # seen on tensorrt-rtx 1.7.1 plans; datacenter plans were never built here


@dataclass(frozen=True)
class BuildOptions:
    """`request.options` checked and resolved: one error per bad value, before anything is built."""

    flavour: str  # "datacenter" | "rtx", never "auto"
    workspace: int | None  # bytes; None: TensorRT's default (all device memory)
    optimization_level: int
    compute_capabilities: tuple[str, ...]  # "sm_89", ...; RTX only
    hardware_compatibility_level: str
    cuda_graph: bool

    @staticmethod
    def parse(options: dict[str, Any], target: Target) -> BuildOptions:
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ValueError(f"tensorrt options {unknown}: unknown; known: {', '.join(OPTIONS)}")
        if target.kind not in TARGET_KINDS:
            raise ValueError(f"tensorrt builds for gpu and rtx targets, not {target.id}")
        flavour = str(options.get("flavour", "auto"))
        if flavour not in FLAVOURS:
            raise ValueError(f"tensorrt flavour {flavour!r}: expected one of {', '.join(FLAVOURS)}")
        if flavour == "auto":
            flavour = "rtx" if target.kind == "rtx" else "datacenter"
        if flavour == "datacenter" and target.kind == "rtx":
            raise ValueError(f"target {target.id} is a TensorRT-RTX target: use flavour rtx (or auto)")
        level = options.get("optimization_level", 3)
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 5:
            raise ValueError(f"tensorrt optimization_level {level!r}: expected an integer 0..5")
        compatibility = str(options.get("hardware_compatibility_level", "none"))
        if compatibility not in COMPATIBILITY_LEVELS:
            expected = ", ".join(COMPATIBILITY_LEVELS)
            raise ValueError(f"tensorrt hardware_compatibility_level {compatibility!r}: expected one of {expected}")
        if compatibility != "none" and flavour == "rtx":
            raise ValueError("tensorrt hardware_compatibility_level is a datacenter option; RTX engines list compute_capabilities")
        capabilities: tuple[str, ...] = ()
        if flavour == "rtx":
            capabilities = _compute_capabilities(options.get("compute_capabilities"), target)
        elif "compute_capabilities" in options:
            raise ValueError("tensorrt compute_capabilities is an RTX option; a datacenter engine is built for the local GPU")
        cuda_graph = options.get("cuda_graph", False)
        if not isinstance(cuda_graph, bool):
            raise ValueError(f"tensorrt cuda_graph {cuda_graph!r}: expected true or false")
        workspace = parse_bytes(options["workspace"]) if "workspace" in options else None
        return BuildOptions(flavour, workspace, level, capabilities, compatibility, cuda_graph)


def _compute_capabilities(value: Any, target: Target) -> tuple[str, ...]:
    if value is None:
        # An RTX target names its capabilities ("sm_86+sm_89"); a GPU target has one.
        value = target.name.split("+") if target.kind == "rtx" else [f"sm_{(target.compute_capability or '').replace('.', '')}"]
    if isinstance(value, str) or not isinstance(value, list | tuple) or not value:
        raise ValueError(f"tensorrt compute_capabilities {value!r}: expected a non-empty list like ['sm_86', 'sm_89']")
    for item in value:
        if not isinstance(item, str) or not re.fullmatch(r"sm_\d{2,3}", item):
            raise ValueError(f"tensorrt compute capability {item!r}: expected a name like 'sm_89'")
    return tuple(dict.fromkeys(value))


_UNITS = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def parse_bytes(value: int | str) -> int | None:
    """A byte count from an int or a string like "64MiB", "1GiB", "512KiB"; "unlimited" is None."""
    if isinstance(value, bool):
        raise ValueError(f"workspace {value!r}: expected bytes (an integer) or a size like '64MiB', '1GiB', 'unlimited'")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"workspace {value}: must be a positive number of bytes")
        return value
    text = str(value).strip()
    if text.lower() == "unlimited":
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)", text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        hint = " (binary units: KiB, MiB, GiB, TiB)" if match and unit in ("kb", "mb", "gb", "tb", "k", "m", "g") else ""
        raise ValueError(f"workspace {value!r}: expected bytes or a size like '64MiB', '1GiB', '512KiB', 'unlimited'{hint}")
    size = float(match.group(1)) * _UNITS[unit]
    if size < 1 or size != int(size):
        raise ValueError(f"workspace {value!r}: must be a whole, positive number of bytes")
    return int(size)


def plan_flavour(plan: bytes) -> str | None:
    """"rtx" for a TensorRT-RTX plan (it starts with b"vtrt"), else None: this header is all farm has checked."""
    return "rtx" if plan[: len(RTX_PLAN_MAGIC)] == RTX_PLAN_MAGIC else None


def installed_version(flavour: str) -> str | None:
    """The installed version of a flavour's Python module, found without importing it."""
    try:
        spec = importlib.util.find_spec(MODULES[flavour])
    except (ImportError, ValueError):
        return None
    # tensorrt-stubs leaves a `tensorrt/` folder of .pyi files: a namespace package with no origin, not TensorRT.
    if spec is None or spec.origin is None:
        return None
    pattern = re.compile(DISTRIBUTIONS[flavour])
    for dist in metadata.distributions():
        name = re.sub(r"[-_.]+", "-", dist.metadata["Name"] or "").lower()
        if pattern.fullmatch(name):
            return dist.version
    try:  # not from a wheel (a tar install on PYTHONPATH): only the module knows its version
        return str(import_flavour(flavour).__version__)
    except (BackendUnavailable, AttributeError):
        return None


def runtime_status() -> str:
    """Whether engines can run here: cuda-python and a CUDA GPU (builds need neither on RTX)."""
    try:
        device = cuda.describe_device()
    except cuda.CudaError as exc:
        reason = "cuda-python missing" if "not installed" in str(exc) else "no CUDA GPU"
        return f"none ({reason}: builds only)"
    return f"{device['name']} sm_{device['compute_capability'].replace('.', '')}"


def import_flavour(flavour: str) -> ModuleType:
    """The flavour's TensorRT module, or BackendUnavailable with the line that installs it."""
    missing = f"tensorrt flavour {flavour}: module {MODULES[flavour]} is not installed ({INSTALL[flavour]})"
    try:
        module = importlib.import_module(MODULES[flavour])
    except ImportError as exc:
        raise BackendUnavailable(missing) from exc
    except OSError as exc:  # the bindings wheel without its shared libraries (libnvinfer) installs but cannot load
        raise BackendUnavailable(f"tensorrt flavour {flavour}: {MODULES[flavour]} is installed but cannot load ({exc})") from exc
    if not hasattr(module, "Builder"):  # the stubs' namespace package imports, but is not TensorRT
        raise BackendUnavailable(missing)
    return module


def version_label(flavour: str, version: str) -> str:
    return f"rtx {version}" if flavour == "rtx" else version
