# The scaling run on the device (16 cores; wheels of scripts/device-wheels.sh in /tmp/site), from the repository root:
#   PYTHONPATH=/tmp/site:$PWD python3 benchmarks/fleet_scaling.py --device-hosts --out $OUT/fleet_scaling_16core.json
"""How the farm scales: one sweep of real CPU work on fleets of 1, 2 and 4 worker nodes, and the
driver's own cost per job at 1,000 and 10,000 jobs.

Fleet part. A real Ray cluster on this machine (tests/ray_cluster.py: a head with --num-cpus=0 and
worker nodes started with `ray start`, each with --num-cpus fixed), and the same sweep through
`farm sweep --address` on each: ONNX Runtime builds and TensorRT-RTX builds (build-only, sm_89) of
several models, benchmarks and fidelity. Every run gets a fresh store, so all of it is redone.
Efficiency = (sum of job seconds / worker slots) / wall time: 1.0 is a fleet never idle and a
driver that costs nothing. Nodes on one machine share its cores and its host (a timing holds the
host), so this measures the farm's bookkeeping and placement, not a speed-up a machine cannot give.

Driver part. No Ray: the real planner (farm.run.plan.expand over a simulated fleet of 100 nodes of 10
kinds), the real store (SQLite files), and the driver's loop as farm.run.driver runs it (Schedule and
Placement pick, each job is claimed (its lease, farm.store.leases), one job finishes per turn, its row is
written and its lease released). Each job "finishes" at once, so
what is left is the driver's cost per job: what a fleet pays on top of the work.

    .venv/bin/python benchmarks/fleet_scaling.py [--nodes 1 2 4] [--jobs 1000 10000] [--skip-fleet] [--skip-driver]

Hosts part (--device-hosts), for a machine with many cores (the GPU machine's 16; no GPU is used). Each
worker node is started with FARM_NODE_IS_HOST=1, the BENCHMARK-ONLY switch that makes a Ray node
count as a host of its own (workers.device.NODE_IS_HOST), so that timings of different nodes run at
once as on separate machines. A head with --num-cpus=0 and N worker nodes of --cpus-per-node CPUs
each build and time an ONNX Runtime CPU sweep of --models torchvision models (random weights, 38
jobs each, most of a node's time in 18 timings of 1-2 s that hold it); the same sweep on 1 such node
gives T1, and efficiency = T1 / (N * TN). The default, 5 models on 1 then 4 nodes of 3 CPUs, is
meant to take about 5 minutes in all, Ray's starts and stops included (one model took 105 s on a
1-CPU node of a 2-core machine). Only that part runs; the JSON goes to
benchmarks/results/<gpu or host>/fleet_scaling_16core.json. The command for the device is at the top.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from farm.run import cluster  # noqa: E402
from farm.run.jobs import TargetGroup  # noqa: E402
from farm.run.plan import expand  # noqa: E402
from farm.run.schedule import TIMING_STAGES, Placement, Schedule  # noqa: E402
from farm.run.spec import SweepSpec  # noqa: E402
from farm.run.stages import registry  # noqa: E402
from farm.store import StoreLocation, open_store, schema  # noqa: E402
from farm.store.record import Recorder  # noqa: E402
from farm.run.tasks import Outcome  # noqa: E402
from workers.device import NODE_IS_HOST, describe  # noqa: E402

# The CLI as a module: on a machine where farm's dependencies are wheels on PYTHONPATH, no `farm` script exists.
FARM = [sys.executable, "-m", "farm.cli"]

# The fleet sweep: real work of a few seconds per job, so that the farm's share shows.
FLEET_SPEC: dict[str, Any] = {
    "name": "fleet-scaling",
    "models": [
        {"name": "resnet18", "source": "torchvision:resnet18", "weights": None},
        {"name": "mobilenet_v3_small", "source": "torchvision:mobilenet_v3_small", "weights": None},
        {"name": "squeezenet1_1", "source": "torchvision:squeezenet1_1", "weights": None},
        {"name": "shufflenet_v2_x0_5", "source": "torchvision:shufflenet_v2_x0_5", "weights": None},
    ],
    "precisions": ["fp32", "fp16"],
    "batch_sizes": [1, 4],
    "backends": {"onnxruntime": {"intra_op_threads": 1, "graph_optimization_level": ["basic", "all"]},
                 "tensorrt": {"workspace": "1GiB"}},
    "targets": ["cpu", "rtx:sm_89"],
    "calibration": {"data": str(REPO / "calibration_data"), "samples": 8},
    "benchmark": {"warmup_s": 0.2, "duration_s": 1.0, "min_iterations": 10},
    "fidelity": {"samples": 8},
}

# The driver sweep: a model's jobs over ten targets; models are added until the plan has N jobs.
DRIVER_SPEC: dict[str, Any] = {
    "name": "driver-cost",
    "precisions": ["fp32", "fp16", "int8"],
    "batch_sizes": [1, 8, 32],
    "backends": {"onnxruntime": {"intra_op_threads": [1, 4]}},
    "calibration": {"data": str(REPO / "calibration_data"), "samples": 8},
    "fidelity": {"samples": 8},
}
SIMULATED_NODES, SIMULATED_KINDS, SIMULATED_CPUS = 100, 10, 4


# --- the fleet ----------------------------------------------------------------------------


def fleet_run(nodes: int, spec_path: Path, work: Path, cpus: int = 1, own_host: bool = False, gpus: int | None = None,
              env: dict[str, str] | None = None, layout: CoreLayout | None = None) -> dict[str, Any]:
    """The sweep through `farm sweep --address` on a fresh fleet of `nodes` worker nodes of `cpus` CPUs;
    `own_host` starts them with the benchmark-only switch; `layout` pins each node, and the head and
    driver, to CPUs of their own. Wall time is the sweep's, Ray's start not counted."""
    from tests.ray_cluster import LocalFleet

    began = time.perf_counter()
    fleet = LocalFleet(env=env)  # the head inherits this process's affinity: layout.rest where pinned
    try:
        for i in range(nodes):
            fleet.add_node(cpus=cpus, own_host=own_host, gpus=gpus, cores=layout.nodes[i] if layout else None)
        data = work / f"data-{nodes}"
        started, started_wall = time.perf_counter(), time.time()
        result = subprocess.run([*FARM, "sweep", str(spec_path), "--data-dir", str(data), "--address", fleet.address, "--force"],
                                env=fleet.env, capture_output=True, text=True, timeout=3600)
        wall = time.perf_counter() - started
        ended_wall = time.time()
    finally:
        fleet.stop()
    if result.returncode not in (0, 1):  # 1: some jobs failed, which the row counts say
        raise SystemExit(f"the sweep on {nodes} node(s) failed (exit {result.returncode}): {result.stdout[-2000:]}{result.stderr[-2000:]}")
    rows = stage_rows(data)
    busy = sum(r.seconds for r in rows)
    slots = nodes * cpus
    stages = sorted({r.stage for r in rows})
    return {"nodes": nodes, "cpus_per_node": cpus, "slots": slots, "jobs": len(rows), "failed": sum(not r.ok for r in rows),
            "wall_s": wall, "with_ray_s": time.perf_counter() - began, "job_seconds": busy,
            "timing_seconds": sum(r.seconds for r in rows if r.timing), "ideal_s": busy / slots,
            "stage_seconds": {stage: round(sum(r.seconds for r in rows if r.stage == stage), 2) for stage in stages},
            "efficiency": busy / slots / wall, "hosts": len({r.host for r in rows if r.host}),
            "most_timings_at_once": most_at_once([(r.started, r.ended) for r in rows if r.timing])} | where_time_went(rows, started_wall, ended_wall)


def where_time_went(rows: list[StageRow], started: float, ended: float) -> dict[str, Any]:
    """What the wall time holds besides jobs: the CLI and driver before the first job starts (interpreter, checks,
    Ray's connection, planning) and after the last ends (the closing table), and per host the share of the jobs'
    span it was busy with at least one job (a host idle while others work is lost scaling), and the idle gaps
    between its jobs: many short ones are each job's hand-over (Ray, the driver), long ones a host with no work."""
    spans = [(r.started, r.ended) for r in rows if r.started and r.ended]
    if not spans:
        return {}
    first, last = min(a for a, _ in spans), max(b for _, b in spans)
    busy, gaps = {}, []
    for host in sorted({r.host for r in rows if r.host}):
        mine = sorted((r.started, r.ended) for r in rows if r.host == host and r.started and r.ended)
        covered, reach = 0.0, mine[0][0]
        for a, b in mine:  # the union of its jobs' spans
            if a > reach:
                gaps.append(a - reach)
            covered += max(0.0, b - max(a, reach))
            reach = max(reach, b)
        # keyed by the id's end: the Ray node where each node is a host (their ids share the machine's part)
        busy[host.rsplit(" ", 1)[-1][:12]] = round(covered / (last - first), 3) if last > first else None
    gaps.sort()
    return {"before_first_job_s": first - started, "after_last_job_s": ended - last, "jobs_span_s": last - first,
            "host_busy_share": busy, "idle_gaps": {"count": len(gaps), "total_s": round(sum(gaps), 2),
                                                   "median_s": round(gaps[len(gaps) // 2], 3) if gaps else None,
                                                   "over_1s": sum(g > 1 for g in gaps), "over_1s_total_s": round(sum(g for g in gaps if g > 1), 2)}}


@dataclass(frozen=True)
class StageRow:
    stage: str
    seconds: float
    ok: bool
    timing: bool  # a benchmark or re-timing
    host: str | None  # the host id placement counted (None: a row no task made, or from before hosts were recorded)
    started: float  # wall clock on the worker
    ended: float


def stage_rows(data: Path) -> list[StageRow]:
    store = open_store(StoreLocation.resolve(data), readonly=True)
    try:
        with store.session() as s:
            return [StageRow(stage, row.seconds or 0.0, row.status == "ok", stage in TIMING_STAGES, (row.device or {}).get("host_id"),
                             (row.device or {}).get("started", 0.0), (row.device or {}).get("ended", 0.0))
                    for stage, table in schema.STAGE_TABLES.items() for row in s.query(table).all()]
    finally:
        store.close()


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The largest number of these (start, end) spans that overlap at one moment."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])  # an end sorts before a start at a tie
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


# --- nodes as hosts: the scaling run on one machine of many cores ---------------------------

# Torchvision classifiers that export at opset 17 and build on ONNX Runtime's CPU provider, in the order
# --models takes them: jobs of one to a few seconds each.
HOSTS_MODELS = ("resnet18", "mobilenet_v2", "squeezenet1_1", "shufflenet_v2_x1_0", "mnasnet1_0", "regnet_x_400mf",
                "resnet34", "mobilenet_v3_large", "regnet_y_400mf", "shufflenet_v2_x0_5", "squeezenet1_0", "mnasnet0_5")


def hosts_spec(models: int) -> dict[str, Any]:
    """The scaling sweep: ONNX Runtime only (no TensorRT on the device), CPU target only, fp32 and fp16,
    two optimization levels and two thread counts, batches 1 and 8, fidelity and re-timing: 38 jobs a model."""
    return {
        "name": "fleet-hosts-scaling",
        "models": [{"name": name, "source": f"torchvision:{name}", "weights": None} for name in HOSTS_MODELS[:models]],
        "precisions": ["fp32", "fp16"],
        "batch_sizes": [1, 8],
        "backends": {"onnxruntime": {"intra_op_threads": [1, 2], "graph_optimization_level": ["basic", "all"]}},
        "targets": ["cpu"],
        "calibration": {"data": str(REPO / "calibration_data"), "samples": 8},
        "benchmark": {"warmup_s": 0.2, "duration_s": 1.0, "min_iterations": 10, "max_duration_s": 2.0},
        "fidelity": {"samples": 8},
    }


@dataclass(frozen=True)
class CoreLayout:
    """Which logical CPUs each worker node may use, and the rest (head, driver, this script). Sibling
    hyperthreads are kept together, so a node shares as few physical cores with the others as its
    CPU count allows."""

    nodes: list[list[int]]
    rest: list[int]

    @classmethod
    def of(cls, nodes: int, cpus: int) -> CoreLayout | None:
        """None where this process may not use enough CPUs for every node and at least one more."""
        allowed = sorted(os.sched_getaffinity(0), key=_core_of)
        if nodes * cpus >= len(allowed):
            return None
        return cls([allowed[i * cpus:(i + 1) * cpus] for i in range(nodes)], allowed[nodes * cpus:])


def _core_of(cpu: int) -> tuple[int, int, int]:
    """(package, core, cpu) from sysfs: sibling hyperthreads sort next to each other."""
    topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
    try:
        return int((topology / "physical_package_id").read_text()), int((topology / "core_id").read_text()), cpu
    except (OSError, ValueError):
        return 0, cpu, cpu


def hosts_scaling(nodes: list[int], cpus: int, models: int, work: Path, pin: bool = True) -> dict[str, Any]:
    """The scaling sweep on fleets of `nodes` worker nodes of `cpus` CPUs, each its own host; efficiency
    against the 1-node run: T1 / (N * TN). `pin`: each node on CPUs of its own (the same ones for node 1
    in every run), the head and driver on the rest, as separate machines would be."""
    spec = hosts_spec(models)
    spec_path = work / "hosts.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    layout = CoreLayout.of(max(nodes), cpus) if pin else None
    if layout:
        os.sched_setaffinity(0, layout.rest)  # the head and the driver inherit it
        print(f"pinned: node i on CPUs {layout.nodes}; head, driver and this script on {layout.rest}")
    elif pin:
        print(f"not pinned: {max(nodes)} nodes of {cpus} CPUs need more than the {len(os.sched_getaffinity(0))} CPUs here")
    # CPU work only: no node offers Ray the GPU, and no process of the run initialises CUDA.
    runs = [fleet_run(n, spec_path, work, cpus=cpus, own_host=True, gpus=0, env={"CUDA_VISIBLE_DEVICES": ""}, layout=layout)
            for n in nodes]
    one = runs[0]["wall_s"]
    for run in runs:
        run["speedup"] = one / run["wall_s"]
        run["scaling_efficiency"] = one / (run["nodes"] * run["wall_s"])
    print(f"\n{'nodes':>6}{'CPUs':>6}{'hosts':>7}{'jobs':>6}{'failed':>8}{'timings':>9}{'wall s':>9}{'job s':>9}{'busy':>7}"
          f"{'speedup':>9}{'T1/(N*TN)':>11}")
    for run in runs:
        print(f"{run['nodes']:>6}{run['cpus_per_node']:>6}{run['hosts']:>7}{run['jobs']:>6}{run['failed']:>8}"
              f"{run['most_timings_at_once']:>9}{run['wall_s']:>9.1f}{run['job_seconds']:>9.1f}{run['efficiency']:>7.2f}"
              f"{run['speedup']:>9.2f}{run['scaling_efficiency']:>11.2f}")
    print("timings: most benchmarks/re-timings running at once; busy: job seconds / CPUs / wall")
    for run in runs:
        if "jobs_span_s" in run:
            print(f"{run['nodes']} node(s): {run['before_first_job_s']:.1f} s before the first job, {run['after_last_job_s']:.1f} s after the "
                  f"last; hosts busy for {', '.join(f'{v:.0%}' for v in run['host_busy_share'].values())} of the {run['jobs_span_s']:.1f} s between")
            idle = run["idle_gaps"]
            print(f"  idle between jobs: {idle['count']} gaps, {idle['total_s']:.1f} s in all (median {idle['median_s'] or 0:.2f} s); "
                  f"{idle['over_1s']} over 1 s, {idle['over_1s_total_s']:.1f} s of it")
    print("job seconds by stage: " + "; ".join(f"{stage} " + " -> ".join(f"{run['stage_seconds'].get(stage, 0):.1f}" for run in runs)
                                                  for stage in runs[0]["stage_seconds"]))
    return {"switch": f"{NODE_IS_HOST}=1 on every worker node (benchmark only)", "spec": spec, "cpus_per_node": cpus,
            "pinned": {"nodes": layout.nodes, "rest": layout.rest} if layout else None,
            "efficiency": "T1 / (N * TN), T1 the 1-node wall time", "runs": runs}


def results_folder() -> str:
    """benchmarks/results/<this>: the GPU's short name (h100, h200) where there is one, else the host name."""
    info = describe()
    found = re.search(r"\b([A-Z]{1,2}\d{2,4})\b", info.gpus[0].name) if info.gpus else None
    return found.group(1).lower() if found else info.hostname


# --- the driver ---------------------------------------------------------------------------


def simulated_fleet() -> list[cluster.Node]:
    """100 nodes of 10 kinds (labels), each its own host: what the driver plans and places over."""
    base = describe()
    nodes = []
    for i in range(SIMULATED_NODES):
        label = f"kind-{i % SIMULATED_KINDS}"
        device = replace(base, hostname=f"node-{i}", host_id=f"host-{i}", labels=(label,), gpus=(),
                         backends={"onnxruntime": "1.0"})
        nodes.append(cluster.Node(f"{i:056x}", SIMULATED_CPUS, 0, device))
    return nodes


def driver_spec(jobs: int, groups: list[TargetGroup]) -> SweepSpec:
    """The driver sweep with as many models as it takes for its plan to have about `jobs` jobs."""
    def spec_of(models: int) -> SweepSpec:
        return SweepSpec.model_validate(DRIVER_SPEC | {"models": [
            {"name": f"net{i}", "source": "torchvision:resnet18", "weights": None} for i in range(models)]})

    per_model = len(expand(spec_of(1), REPO, groups).jobs)
    return spec_of(max(1, math.ceil(jobs / per_model)))


@dataclass
class DriverCost:
    jobs: int
    expand_s: float
    start_sweep_s: float
    resume_check_s: float
    schedule_s: float
    record_s: float

    @property
    def total_s(self) -> float:
        return self.expand_s + self.start_sweep_s + self.resume_check_s + self.schedule_s + self.record_s

    def row(self) -> dict[str, Any]:
        per_job = {k: v / self.jobs * 1e3 for k, v in self.__dict__.items() if k.endswith("_s")}
        return {"jobs": self.jobs, **{k: round(v, 4) for k, v in self.__dict__.items() if k.endswith("_s")},
                "total_s": round(self.total_s, 4), "per_job_ms": {k.removesuffix("_s"): round(v, 4) for k, v in per_job.items()},
                "total_per_job_ms": round(self.total_s / self.jobs * 1e3, 4)}


def driver_cost(wanted: int, work: Path, leases: bool = True) -> DriverCost:
    """The driver's own cost of `wanted` jobs; `leases` False: without job leases (a job marked running, no claim),
    as the driver was before them, to compare."""
    nodes = simulated_fleet()
    groups = cluster.group_targets(nodes)
    spec = driver_spec(wanted, groups)
    t0 = time.perf_counter()
    plan = expand(spec, REPO, groups)
    t1 = time.perf_counter()
    store = open_store(StoreLocation.resolve(work / f"driver-{wanted}-{'leases' if leases else 'none'}"))
    recorder = Recorder(store)
    recorder.save_targets([schema.Target(id=g.target.id, kind=g.target.kind, name=g.target.name) for g in groups])
    t2 = time.perf_counter()
    since = datetime.now(UTC)
    sweep_id = recorder.start_sweep(spec.name, "driver", spec.model_dump(mode="json"), ((j.stage, j.key, j.label) for j in plan.jobs))
    t3 = time.perf_counter()
    for job in plan.jobs:  # what SweepRun.execute asks first: which jobs an earlier sweep finished
        recorder.finished(job.stage, job.key)
    t4 = time.perf_counter()
    placement = Placement(groups, {n.node_id: (n.device.host_id, n.cpus) for n in nodes})
    schedule = Schedule(plan.jobs, max_inflight=int(sum(n.cpus for n in nodes)), timeout_s=600, placement=placement)
    stages = registry()
    running: list[str] = []
    scheduling = recording = 0.0
    while not schedule.finished:
        a = time.perf_counter()
        start, ended = schedule.advance()
        b = time.perf_counter()
        if leases:
            recorder.heartbeat(sweep_id)  # as the driver's loop: written every HEARTBEAT_S, renewing every lease at once
        for job, node in start:
            if leases:
                assert recorder.claim(sweep_id, job.stage, job.key, node or "", since).ours, "no other driver here"
            else:
                recorder.started(sweep_id, job.stage, job.key, node or "")
            running.append(job.key)
        c = time.perf_counter()
        scheduling += b - a
        recording += c - b
        if not running:
            assert not start and not ended, "the simulated fleet should run every job"
            continue
        key = running.pop(0)  # one job ends per turn, as ray.wait(num_returns=1) gives them
        job = schedule.jobs[key]
        # A failed row has the stage's own columns from the job alone: the same writes as an ok row, no worker needed.
        row = stages[job.stage].row(job, Outcome(False, error="simulated"), {})
        d = time.perf_counter()
        recorder.record(sweep_id, row)
        e = time.perf_counter()
        schedule.finish(key, "done")
        f = time.perf_counter()
        recording += e - d
        scheduling += f - e
    store.close()
    return DriverCost(len(plan.jobs), t1 - t0, t3 - t2, t4 - t3, scheduling, recording)


def ray_cost(tasks: int, inflight: int = 64) -> float:
    """Ray's own part of a job, in ms: no-op tasks submitted, waited for one at a time and fetched, as the
    driver's loop does, on a local Ray of this machine's CPUs."""
    import ray

    ray.init(include_dashboard=False, log_to_driver=False, _system_config=cluster.WARM_WORKERS)
    try:
        noop = ray.remote(num_cpus=0)(_noop)
        ray.get([noop.remote(None) for _ in range(inflight)])  # workers started
        started = time.perf_counter()
        running: list[Any] = []
        submitted = 0
        while submitted < tasks or running:
            while submitted < tasks and len(running) < inflight:
                running.append(noop.remote(b"x" * 100))
                submitted += 1
            done, running = ray.wait(running, num_returns=1)
            ray.get(done)
        return (time.perf_counter() - started) / tasks * 1e3
    finally:
        ray.shutdown()


def _noop(value: Any) -> Any:
    return value


# --- the report ---------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=None, help="worker node counts (default 1 2 4; --device-hosts: 1 4)")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--skip-fleet", action="store_true")
    parser.add_argument("--skip-driver", action="store_true")
    parser.add_argument("--device-hosts", action="store_true",
                        help=f"only the scaling run of nodes that are hosts of their own ({NODE_IS_HOST}=1, benchmark only)")
    parser.add_argument("--cpus-per-node", type=int, default=3, help="--device-hosts: CPUs of each worker node (default 3)")
    parser.add_argument("--models", type=int, default=5, choices=range(1, len(HOSTS_MODELS) + 1), metavar=f"1..{len(HOSTS_MODELS)}",
                        help="--device-hosts: the sweep's size, in models of 38 jobs each (default 5)")
    parser.add_argument("--no-pin", action="store_true",
                        help="--device-hosts: let every node use every CPU (default: each node on CPUs of its own)")
    parser.add_argument("--out", type=Path, default=None,
                        help="default benchmarks/results/fleet_scaling.json; --device-hosts: benchmarks/results/<gpu or host>/fleet_scaling_16core.json")
    args = parser.parse_args()
    if args.device_hosts and (args.nodes or [1])[0] != 1:
        parser.error("--device-hosts: --nodes must start with 1, the run that efficiency is measured against")
    if args.cpus_per_node < 1:
        parser.error("--cpus-per-node must be at least 1")
    with tempfile.TemporaryDirectory(prefix="farm-scaling-") as tmp:
        if args.device_hosts:
            out = args.out or REPO / "benchmarks" / "results" / results_folder() / "fleet_scaling_16core.json"
            report = hosts_report(args.nodes or [1, 4], args.cpus_per_node, args.models, Path(tmp), pin=not args.no_pin)
        else:
            out = args.out or REPO / "benchmarks" / "results" / "fleet_scaling.json"
            report = default_report(args, out, Path(tmp))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


def hosts_report(nodes: list[int], cpus: int, models: int, work: Path, pin: bool) -> dict[str, Any]:
    began = time.perf_counter()
    info = describe()
    machine = {"cpu": info.cpu.model, "logical_cores": info.cpu.logical_cores, "physical_cores": info.cpu.physical_cores,
               "gpu": info.gpus[0].name if info.gpus else None, "hostname": info.hostname}
    report: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine,
              "hosts": hosts_scaling(nodes, cpus, models, work, pin)}
    report["total_s"] = time.perf_counter() - began
    print(f"the whole scaling run, Ray's starts and stops included: {report['total_s']:.0f} s")
    return report


def default_report(args: argparse.Namespace, out: Path, work: Path) -> dict[str, Any]:
    """The driver part and the 1-CPU-node fleet part; a part skipped keeps its numbers from `out`."""
    previous = json.loads(out.read_text()) if out.exists() else {}
    report: dict[str, Any] = {"machine": {"cpu": describe().cpu.model, "cores": os.cpu_count()}}
    if not args.skip_driver:
        costs = [driver_cost(n, work) for n in args.jobs]
        print(f"{'jobs':>7}{'expand':>10}{'sweep rows':>12}{'resume chk':>12}{'schedule':>10}{'record':>10}{'total':>10}"
              f"{'per job':>10}   (seconds; per job in ms)")
        for cost in costs:
            print(f"{cost.jobs:>7}{cost.expand_s:>10.2f}{cost.start_sweep_s:>12.2f}{cost.resume_check_s:>12.2f}"
                  f"{cost.schedule_s:>10.2f}{cost.record_s:>10.2f}{cost.total_s:>10.2f}{cost.total_s / cost.jobs * 1e3:>10.2f}")
        ray_ms = {inflight: ray_cost(3000, inflight) for inflight in (64, 800)}
        for inflight, ms in ray_ms.items():
            print(f"Ray's part of a job (submit, wait, get of a no-op task), {inflight} in flight: {ms:.2f} ms")
        report["driver"] = {"simulated_fleet": {"nodes": SIMULATED_NODES, "kinds": SIMULATED_KINDS, "cpus_each": SIMULATED_CPUS},
                            "store": "sqlite", "runs": [c.row() for c in costs],
                            "ray_per_task_ms_by_inflight": {str(k): round(v, 3) for k, v in ray_ms.items()}}
    elif "driver" in previous:
        report["driver"] = previous["driver"]
    if not args.skip_fleet:
        spec_path = work / "fleet.yaml"
        spec_path.write_text(yaml.safe_dump(FLEET_SPEC))
        runs = [fleet_run(n, spec_path, work) for n in args.nodes or [1, 2, 4]]
        print(f"\n{'nodes':>6}{'jobs':>6}{'wall s':>9}{'job s':>9}{'ideal s':>9}{'efficiency':>12}")
        for run in runs:
            print(f"{run['nodes']:>6}{run['jobs']:>6}{run['wall_s']:>9.1f}{run['job_seconds']:>9.1f}{run['ideal_s']:>9.1f}"
                  f"{run['efficiency']:>12.2f}")
        report["fleet"] = {"spec": FLEET_SPEC, "cpus_per_node": 1, "runs": runs,
                           "speedup_vs_1_node": {str(r["nodes"]): runs[0]["wall_s"] / r["wall_s"] for r in runs}}
    elif "fleet" in previous:
        report["fleet"] = previous["fleet"]
    return report


if __name__ == "__main__":
    main()
