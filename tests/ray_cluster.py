"""A real multi-node Ray cluster on this machine, started with `ray start` the way a fleet is: a head
that only coordinates (--num-cpus=0) and worker nodes that join it with their own CPUs and
`farm-label:` resources. Nodes are processes here, so a test can kill one the way a machine dies.

Everything it starts lives under its own --temp-dir and is stopped by that path alone: `ray stop`
would also end the test session's own local Ray.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection
from pathlib import Path

import psutil

from farm.run.cluster import WARM_WORKERS
from workers.device import NODE_IS_HOST


def ray_cli() -> list[str]:
    """The `ray` command of this interpreter: its script beside the interpreter (a venv), else the module
    (a machine where Ray came as wheels unpacked into a folder on PYTHONPATH, with no script installed)."""
    script = Path(sys.executable).with_name("ray")
    return [str(script)] if script.exists() else [sys.executable, "-m", "ray.scripts.scripts"]


RAY = ray_cli()


def free_ports(count: int, avoid: Collection[int] = ()) -> list[int]:
    """`count` distinct free ports, none in `avoid`: every socket stays bound until all are chosen, so
    the OS cannot hand out one port twice (one port for two agents failed `ray start` once in CI)."""
    with contextlib.ExitStack() as held:
        ports: list[int] = []
        while len(ports) < count:
            s = held.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            if (port := int(s.getsockname()[1])) not in avoid:
                ports.append(port)
        return ports


def free_port() -> int:
    return free_ports(1)[0]


def _agent_ports(args: list[str]) -> list[str]:
    # A second Ray on one machine needs its own of every port the first may hold, and none of the ports
    # this `ray start` is already given (the head's, a node manager's).
    given = {int(value) for arg in args if "port" in arg and (value := arg.rsplit("=", 1)[-1].rsplit(":", 1)[-1]).isdigit()}
    names = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port")
    return [f"--{name}={port}" for name, port in zip(names, free_ports(len(names), given), strict=True)]


class LocalFleet:
    """A head and the worker nodes added to it; `env` is what a driver or `ray job submit` needs."""

    def __init__(self, *, dashboard: bool = False, head_cpus: int = 0, env: dict[str, str] | None = None) -> None:
        """`env`: variables on top of this process's own for every node, and in `env` for drivers."""
        # Short: Ray's socket paths under it must fit in 107 bytes, which pytest's tmp_path may not.
        self.temp = Path(tempfile.mkdtemp(prefix="farm-ray-"))
        self.env = dict(os.environ) | (env or {})
        # Ray 2.60 turns token auth on once ~/.ray/auth_token exists, and `ray start` then needs a token;
        # a fresh one in the environment works on a fresh machine and on one where the file exists.
        self.env.update({f"RAY_{name}": str(value) for name, value in WARM_WORKERS.items()})  # as the README starts a fleet
        self.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
                        PATH=f"{Path(sys.executable).parent}{os.pathsep}{self.env['PATH']}")
        self.env.pop("RAY_ADDRESS", None)
        self.address = f"127.0.0.1:{free_port()}"
        self.dashboard_url = f"http://127.0.0.1:{free_port()}" if dashboard else None
        web = ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_url.rsplit(':', 1)[1]}"] \
            if self.dashboard_url else ["--include-dashboard=false"]
        self._start(["--head", f"--port={self.address.rsplit(':', 1)[1]}", f"--num-cpus={head_cpus}", f"--temp-dir={self.temp}", *web])
        self.head = next(iter(self._raylets()))

    def add_node(self, cpus: int, labels: tuple[str, ...] = (), *, own_host: bool = False, gpus: int | None = None,
                 cores: Collection[int] | None = None) -> str:
        """A worker node with `cpus` CPUs (and `gpus` GPUs, Ray's guess when None) and these farm labels;
        returns its Ray node id. `own_host` turns on the benchmark-only switch on this node
        (workers.device.NODE_IS_HOST): it counts as a host of its own, as if on a machine of its own.
        `cores`: the logical CPUs its raylet and every worker it starts may run on (Linux affinity)."""
        before = set(self._raylets())
        resources = json.dumps({f"farm-label:{label}": 1 for label in labels})
        # A temp dir of its own, as on a machine of its own: nodes that share one also share the
        # runtime-env agent's folder, and unpacking a job's working dir there at once races.
        temp = self.temp / f"node{len(before)}"
        self._start([f"--address={self.address}", f"--num-cpus={cpus}", f"--resources={resources}", f"--temp-dir={temp}",
                     *(f"--{name}-port={port}" for name, port in zip(("node-manager", "object-manager"), free_ports(2), strict=True)),
                     *([] if gpus is None else [f"--num-gpus={gpus}"])],
                    {NODE_IS_HOST: "1"} if own_host else {}, cores)
        (node,) = set(self._raylets()) - before
        return node

    def submit_job(self, entrypoint: list[str], cwd: Path, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
        """`ray job submit --working-dir .` from `cwd`, waiting for the job to end (the fleet needs dashboard=True)."""
        assert self.dashboard_url is not None, "ray job submit talks to the dashboard"
        command = [*RAY, "job", "submit", "--address", self.dashboard_url, "--working-dir", ".", "--", *entrypoint]
        for _attempt in range(12):
            result = subprocess.run(command, cwd=cwd, env=self.env, capture_output=True, text=True, timeout=timeout_s)
            # The head's job agent comes up some seconds after `ray start` returns, later on a loaded machine.
            if "No available agent to submit job" not in result.stdout + result.stderr:
                break
            time.sleep(5)
        return result

    def kill_node(self, node_id: str) -> None:
        """SIGKILL a node's raylet and every process under it, as when its machine loses power."""
        raylet = self._raylets()[node_id]
        doomed = [raylet, *raylet.children(recursive=True)]
        doomed += [p for p in self._mine() if f"--node-id={node_id}" in " ".join(p.cmdline())]  # its agents
        for process in doomed:
            with contextlib.suppress(psutil.Error):
                process.send_signal(signal.SIGKILL)

    def stop(self) -> None:
        mine = self._mine()
        for process in mine:
            with contextlib.suppress(psutil.Error):
                process.terminate()
        _gone, alive = psutil.wait_procs(mine, timeout=15)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        shutil.rmtree(self.temp, ignore_errors=True)

    def _start(self, args: list[str], env: dict[str, str] | None = None, cores: Collection[int] | None = None) -> None:
        # The node's raylet, and every worker it starts, inherit this environment and CPU affinity.
        pin = (lambda: os.sched_setaffinity(0, cores)) if cores else None
        started = subprocess.run([*RAY, "start", *args, "--disable-usage-stats", *_agent_ports(args)],
                                 env=self.env | (env or {}), capture_output=True, text=True, timeout=180, preexec_fn=pin)
        if started.returncode:
            self.stop()
            raise RuntimeError(f"ray start {' '.join(args)} failed: {started.stdout[-2000:]} {started.stderr[-2000:]}")

    def _mine(self) -> list[psutil.Process]:
        found = []
        for process in psutil.process_iter(["cmdline"]):
            if str(self.temp) in " ".join(process.info["cmdline"] or []):
                found.append(process)
        return found

    def _raylets(self) -> dict[str, psutil.Process]:
        """Raylet processes under this fleet's temp dir, by the node id they serve."""
        found = {}
        for process in self._mine():
            args = process.info["cmdline"] or []
            if args and args[0].endswith("/raylet"):
                node = next(a.removeprefix("--node_id=") for a in args if a.startswith("--node_id="))
                found[node] = process
        return found
