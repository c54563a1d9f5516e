"""Targets in the cluster: probe every node once, group the nodes by what an engine built there runs on.

Ray names GPUs by marketing name and reads only GPU 0; an engine depends on the compute
capability and the backend version. So farm probes each node itself (NVML, CPU flags,
backend versions) with a task pinned to that node, and schedules by what the probe found.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from farm.run.jobs import TargetGroup
from workers.backends import BACKENDS
from workers.device import DeviceInfo, describe
from workers.structs import Target


RTX_VERSION_KEY = "tensorrt-rtx"


class ClusterError(RuntimeError):
    pass


def _rtx_capability(name: str) -> str:
    """"sm_86+sm_89" -> "8.6+8.9": the compute capabilities one RTX engine is built for."""
    return "+".join(f"{cc[3:-1]}.{cc[-1]}" for cc in name.split("+"))


@dataclass(frozen=True)
class Node:
    node_id: str
    cpus: float
    gpus: float
    device: DeviceInfo


# Ray ends a worker process that sat idle for 1 s when a node has more than its CPUs' worth, and the
# next job there waits for a new interpreter, farm's imports and its forkserver (0.6-1.8 s a job on
# 2 cores: benchmarks/farm_overhead.py). Keeping idle workers for 10 minutes keeps them warm through
# a sweep. The local cluster gets this here; a fleet's nodes get it from their environment
# (RAY_idle_worker_killing_time_threshold_ms=600000 ray start ..., as the README shows).
WARM_WORKERS = {"idle_worker_killing_time_threshold_ms": 600_000}

LABEL_RESOURCE = "farm-label:"  # `ray start --resources '{"farm-label:g5.xlarge": 1}'` names a node's targets


def this_machine(labels: tuple[str, ...] = ()) -> DeviceInfo:
    """What the probe finds on the machine it runs on: the device and every backend's version."""
    info = describe()
    versions: dict[str, str] = {}
    for backend in BACKENDS.values():
        versions.update(backend().versions())
    return replace(info, backends=versions, labels=labels)


def local_targets(rtx_targets: Sequence[str] = ()) -> list[TargetGroup]:
    """This machine's targets, as a local Ray's probe would find them, without starting Ray."""
    device = this_machine()
    return group_targets([Node("local", float(os.cpu_count() or 1), float(len(device.gpus)), device)], rtx_targets)


@ray.remote(num_cpus=0)
def _probe(labels: tuple[str, ...]) -> DeviceInfo:
    return this_machine(labels)


def labels_of(resources: dict[str, float]) -> tuple[str, ...]:
    return tuple(sorted(name.removeprefix(LABEL_RESOURCE) for name in resources if name.startswith(LABEL_RESOURCE)))


class RayLogFile(logging.FileHandler):
    """Where Ray's own log lines go instead of the terminal: farm's handler, told apart from Ray's own."""


def ray_log_file(data_dir: Path) -> Path:
    return data_dir / "logs" / "ray.log"


def quiet_ray(log_file: Path) -> None:
    """Ray's Python lines ("Token authentication is enabled ...", "Started a local Ray instance") go to `log_file`
    rather than the terminal, whose promise is farm's progress and answer; its errors still reach stderr."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("ray")
    for handler in list(logger.handlers):
        if isinstance(handler, RayLogFile):  # an earlier connect of this process, to another data dir
            logger.removeHandler(handler)
            handler.close()
        elif isinstance(handler, logging.StreamHandler):
            handler.setLevel(logging.ERROR)
    logger.addHandler(RayLogFile(log_file, encoding="utf-8"))
    logger.propagate = False


def connect(address: str | None = None, log_file: Path | None = None) -> None:
    """Join the cluster at `address` or RAY_ADDRESS, or start a local one sized to this machine. With `log_file`,
    Ray's own log lines go there (quiet_ray); without, only its warnings and errors are printed."""
    if log_file is not None:
        quiet_ray(log_file)
    if not sys.stderr.isatty():
        # Ray colours the lines it prints for its workers ("(raylet) A worker died ...") whatever the stream;
        # in a log file or a pipe those codes are noise. Ray reads this when it prints, in this process.
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # Printed, Ray's INFO lines ("Connecting to existing Ray cluster", "Started a local Ray instance") are noise on
    # farm's stderr; in the log file they are what a person debugging the cluster wants.
    level = logging.WARNING if log_file is None else logging.INFO
    # ray.init puts its own SIGTERM handler (a bare exit, status 1) in place of the caller's: `farm sweep`'s stops
    # like Ctrl-C (exit 130, the sweep stored as interrupted), so the caller's is put back.
    on_sigterm = signal.getsignal(signal.SIGTERM)
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=level)
    else:
        ray.init(include_dashboard=False, log_to_driver=False, logging_level=level, _system_config=WARM_WORKERS)
    if on_sigterm is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)


def probe(timeout_s: float = 120, known: set[str] | frozenset[str] = frozenset()) -> list[Node]:
    """Every live node not in `known`, probed once by a task pinned to it."""
    alive = [n for n in ray.nodes() if n.get("Alive") and n["NodeID"] not in known]
    if not alive:
        return []
    refs = {
        n["NodeID"]: _probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
            labels_of(n.get("Resources", {})))
        for n in alive
    }
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
    nodes = []
    for raw in alive:
        ref = refs[raw["NodeID"]]
        if ref not in ready:
            continue  # a node that cannot answer a trivial task gets no work either
        resources = raw.get("Resources", {})
        nodes.append(Node(raw["NodeID"], float(resources.get("CPU", 0)), float(resources.get("GPU", 0)), ray.get(ref)))
    if not nodes and not known:
        raise ClusterError("no Ray node answered the device probe")
    return nodes


def alive_nodes() -> set[str]:
    return {n["NodeID"] for n in ray.nodes() if n.get("Alive")}


def group_targets(nodes: list[Node], rtx_targets: Sequence[str] = ()) -> list[TargetGroup]:
    """One group per target id; a backend counts for a target when every node of it has the same version.

    `rtx_targets` ("sm_89", "sm_86+sm_89") become groups of every node that has TensorRT-RTX: such
    engines are built ahead of time on CPUs, for GPUs that need not be in the cluster.
    """
    members: dict[str, list[Node]] = {}
    targets = {}
    for node in nodes:
        if node.cpus < 1:
            continue  # every job needs a CPU: a head started with --num-cpus=0 only coordinates
        for target in node.device.targets():
            if target.kind == "gpu" and node.gpus < 1:
                continue  # NVML sees the GPU but Ray was told not to schedule on it
            members.setdefault(target.id, []).append(node)
            targets[target.id] = target
        for name in rtx_targets:
            if RTX_VERSION_KEY in node.device.backends:
                target = Target("rtx", name, _rtx_capability(name))
                members.setdefault(target.id, []).append(node)
                targets[target.id] = target
    groups = []
    for target_id, group_nodes in members.items():
        versions: dict[str, str] = {}
        for key in {k for n in group_nodes for k in n.device.backends}:
            found = {n.device.backends.get(key) for n in group_nodes}
            if len(found) == 1 and (version := found.pop()) is not None:
                versions[key] = version
        cpus = [n.device.cpu for n in group_nodes]
        groups.append(TargetGroup(targets[target_id], tuple(n.node_id for n in group_nodes), versions,
                                  cpu_arch=cpus[0].arch, int8_dot_32bit=all(c.int8_dot_32bit for c in cpus)))
    return groups
