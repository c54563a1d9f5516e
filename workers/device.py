"""What am I running on: the CPU (model, cores, instruction sets) and the NVIDIA GPUs (through NVML)."""

from __future__ import annotations

import os
import platform
import re
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from workers.structs import Target

# Instruction sets that change which kernels ONNX Runtime and PyTorch pick, best first. VNNI is a
# level of its own: with it, x86 int8 dot products accumulate in 32 bits; without it they saturate
# (INT8_DOT_FLAGS), so two CPUs that differ only there must never share a target.
ISA_LEVELS = (
    ("amx", ("amx_int8", "amx_bf16")),
    ("avx512_vnni", ("avx512_vnni",)),
    ("avx512", ("avx512f",)),
    ("avx_vnni", ("avx_vnni",)),
    ("avx2", ("avx2",)),
    ("neon", ("asimd", "neon")),
)
# x86 instructions that multiply u8 x s8 and add the products in 32 bits. Without one of them ONNX
# Runtime's int8 kernels add pairs of products in 16 bits (VPMADDUBSW), which saturates at full
# 8-bit weight range: the int8 variant must then use 7-bit weights (workers/precision.py).
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
X86 = ("x86_64", "amd64", "i386", "i686")
REPORTED_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_int8", "amx_bf16", "asimd", "sve")


@dataclass(frozen=True)
class CpuInfo:
    model: str
    arch: str
    logical_cores: int
    physical_cores: int
    isa: tuple[str, ...]  # the flags of REPORTED_FLAGS this CPU has

    @property
    def isa_level(self) -> str:
        for level, flags in ISA_LEVELS:
            if any(f in self.isa for f in flags):
                return level
        return "baseline"

    @property
    def int8_dot_32bit(self) -> bool:
        """Whether int8 dot products here accumulate in 32 bits (every non-x86 CPU farm knows does)."""
        return self.arch.lower() not in X86 or any(f in self.isa for f in INT8_DOT_FLAGS)


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    compute_capability: str  # "9.0"
    memory_bytes: int
    uuid: str
    driver: str


@dataclass(frozen=True)
class DeviceInfo:
    hostname: str
    cpu: CpuInfo
    gpus: tuple[GpuInfo, ...] = ()
    gpu_error: str | None = None  # why GPUs could not be listed, when NVML is present but failed
    backends: dict[str, str] = field(default_factory=dict)  # backend name -> version, filled by the caller
    # The physical machine: containers and Ray nodes on one host share its kernel's boot id (and its
    # CPUs), whatever their hostnames say. Timings hold a whole host.
    host_id: str = ""
    labels: tuple[str, ...] = ()  # what the node declared itself (Ray resource "farm-label:NAME"), filled by the caller

    def targets(self) -> list[Target]:
        """The places an engine built here can run: this CPU kind and each distinct GPU kind; a node's
        labels name (and so split) its targets: `cpu:... [g5.xlarge]`."""
        suffix = "".join(f" [{label}]" for label in sorted(self.labels))
        found = [Target("cpu", f"{self.cpu.model} ({self.cpu.arch}, {self.cpu.isa_level}){suffix}")]
        for gpu in self.gpus:
            target = Target("gpu", gpu.name + suffix, gpu.compute_capability)
            if target not in found:
                found.append(target)
        return found


def describe() -> DeviceInfo:
    gpus, gpu_error = _gpus()
    return DeviceInfo(hostname=socket.gethostname(), cpu=_cpu(), gpus=gpus, gpu_error=gpu_error, host_id=host_id())


# BENCHMARK-ONLY SWITCH. `FARM_NODE_IS_HOST=1` in the environment of `ray start` makes every task of
# that node report the Ray node as a host of its own, so timings on Ray nodes of one machine run at
# once and measure each other's load. benchmarks/fleet_scaling.py --device-hosts sets it to measure how
# placement scales timed work over nodes of one big machine; a real fleet must never set it.
NODE_IS_HOST = "FARM_NODE_IS_HOST"


def node_is_host() -> bool:
    """Whether the benchmark-only switch is on in this process (exactly "1"; any other value is off)."""
    return os.environ.get(NODE_IS_HOST) == "1"


def host_id() -> str:
    """This machine's identity: the kernel's boot id (shared by every container on the host), else the
    hostname; with the benchmark-only switch on, inside a Ray task, that id and the task's Ray node."""
    try:
        machine = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        machine = socket.gethostname()
    node = _ray_node() if node_is_host() else None
    return f"{machine} node {node}" if node else machine


def _ray_node() -> str | None:
    """The Ray node this process runs a task on (never imports Ray itself); None in a driver or outside Ray."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    if context.get_task_id() is None:  # a driver (`farm doctor` in a test session with Ray up): not a node's task
        return None
    return str(context.get_node_id())


def _cpu() -> CpuInfo:
    import psutil

    brand, flags = _cpu_brand_and_flags()
    model = re.sub(r"\((R|TM|tm|r)\)", "", brand or platform.processor() or "unknown CPU")
    return CpuInfo(
        model=" ".join(model.split()),
        arch=platform.machine(),
        logical_cores=os.cpu_count() or 1,
        physical_cores=psutil.cpu_count(logical=False) or os.cpu_count() or 1,
        isa=tuple(f for f in REPORTED_FLAGS if f in flags),
    )


def _cpu_brand_and_flags() -> tuple[str, set[str]]:
    """/proc/cpuinfo where it names the model (x86 Linux: instant); py-cpuinfo elsewhere (about 1 s)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    brand = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    flags = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.MULTILINE)
    if brand and flags:
        return brand.group(1).strip(), set(flags.group(1).split())
    import cpuinfo

    info = cpuinfo.get_cpu_info()
    return info.get("brand_raw", ""), set(info.get("flags", []))


def _gpus() -> tuple[tuple[GpuInfo, ...], str | None]:
    try:
        import pynvml
    except ImportError:
        return (), None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        # No driver is the normal case on CPU machines; say so only where a driver library exists.
        missing = isinstance(exc, pynvml.NVMLError_LibraryNotFound) or "not found" in str(exc).lower()
        return (), None if missing else f"NVML: {exc}"
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            gpus.append(
                GpuInfo(
                    index=index,
                    name=_text(pynvml.nvmlDeviceGetName(handle)),
                    compute_capability=f"{major}.{minor}",
                    memory_bytes=int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
                    uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                    driver=driver,
                )
            )
        return tuple(gpus), None
    finally:
        pynvml.nvmlShutdown()


def gpu_clocks(index: int = 0) -> dict[str, int | str | None]:
    """SM and memory clocks (MHz) of NVML device `index` now, and the SM maximum; None values (and why) without one.

    Cheap enough to read at the start and end of every GPU benchmark: a run whose SM clock
    fell has throttled. NVML counts every GPU of the machine, whatever CUDA_VISIBLE_DEVICES says.
    """
    clocks: dict[str, int | str | None] = {"sm_mhz": None, "memory_mhz": None, "sm_max_mhz": None, "error": None}
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # no package, no driver library, no GPU: a CPU machine
        return clocks | {"error": f"{type(exc).__name__}: {exc}"}
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        clocks["sm_mhz"] = int(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM))
        clocks["memory_mhz"] = int(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM))
        clocks["sm_max_mhz"] = int(pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM))
    except pynvml.NVMLError as exc:
        clocks["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        pynvml.nvmlShutdown()
    return clocks


def assigned_gpus() -> tuple[GpuInfo, ...]:
    """The GPUs this process may use: those CUDA_VISIBLE_DEVICES names (indices or UUIDs, as Ray
    sets it for a task that asked for GPUs), else every GPU NVML sees."""
    gpus, _error = _gpus()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return gpus
    chosen = []
    for entry in (e.strip() for e in visible.split(",") if e.strip()):
        match = next((g for g in gpus if entry == str(g.index) or g.uuid.startswith(entry) or entry.startswith(g.uuid)), None)
        if match is not None:
            chosen.append(match)
    return tuple(chosen)


def first_gpu() -> int | None:
    """The NVML index of the first GPU this process uses (what a GPU benchmark times), or None."""
    gpus = assigned_gpus()
    return gpus[0].index if gpus else None


def sm_clock_reader() -> Callable[[], int | None] | None:
    """Reads the SM clock of the first GPU this process uses, or None."""
    index = first_gpu()
    if index is None:
        return None
    return lambda: _as_int(gpu_clocks(index)["sm_mhz"])


def _as_int(value: int | str | None) -> int | None:
    return value if isinstance(value, int) else None


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
