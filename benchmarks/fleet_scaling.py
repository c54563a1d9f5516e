"""How the farm scales: one sweep of real CPU work on fleets of 1, 2 and 4 worker nodes, and the
driver's own cost per job at 1,000 and 10,000 jobs.

Fleet part. A real Ray cluster on this machine (tests/ray_cluster.py: a head with --num-cpus=0 and
worker nodes started with `ray start`, each with --num-cpus fixed), and the same sweep through
`farm sweep --address` on each: ONNX Runtime builds and TensorRT-RTX builds (build-only, sm_89) of
several models, benchmarks and fidelity. Every run gets a fresh store, so all of it is redone.
Efficiency = (sum of job seconds / worker slots) / wall time: 1.0 is a fleet never idle and a
driver that costs nothing. Nodes on one machine share its cores and its host (a timing holds the
host), so this measures the farm's bookkeeping and placement, not a speed-up a machine cannot give.

Driver part. No Ray: the real planner (farm.plan.expand over a simulated fleet of 100 nodes of 10
kinds), the real store (SQLite files), and the driver's loop as farm.driver runs it (Schedule and
Placement pick, one job finishes per turn, its row is written). Each job "finishes" at once, so
what is left is the driver's cost per job: what a fleet pays on top of the work.

    .venv/bin/python benchmarks/fleet_scaling.py [--nodes 1 2 4] [--jobs 1000 10000] [--skip-fleet] [--skip-driver]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from farm import cluster  # noqa: E402
from farm.jobs import TargetGroup  # noqa: E402
from farm.plan import expand  # noqa: E402
from farm.schedule import Placement, Schedule  # noqa: E402
from farm.spec import SweepSpec  # noqa: E402
from farm.stages import registry  # noqa: E402
from farm.store import StoreLocation, open_store, schema  # noqa: E402
from farm.store.record import Recorder  # noqa: E402
from farm.tasks import Outcome  # noqa: E402
from workers.device import describe  # noqa: E402

FARM = str(Path(sys.executable).with_name("farm"))

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


def fleet_run(nodes: int, spec_path: Path, work: Path) -> dict[str, Any]:
    from tests.ray_cluster import LocalFleet

    fleet = LocalFleet()
    try:
        for _ in range(nodes):
            fleet.add_node(cpus=1)
        data = work / f"data-{nodes}"
        started = time.perf_counter()
        result = subprocess.run([FARM, "sweep", str(spec_path), "--data-dir", str(data), "--address", fleet.address, "--force"],
                                env=fleet.env, capture_output=True, text=True, timeout=3600)
        wall = time.perf_counter() - started
    finally:
        fleet.stop()
    if result.returncode != 0:
        raise SystemExit(f"the sweep on {nodes} node(s) failed (exit {result.returncode}): {result.stdout[-2000:]}{result.stderr[-2000:]}")
    store = open_store(StoreLocation.resolve(data), readonly=True)
    with store.session() as s:
        seconds = [row.seconds or 0.0 for table in schema.STAGE_TABLES.values() for row in s.query(table).all()]
    busy = sum(seconds)
    return {"nodes": nodes, "slots": nodes, "jobs": len(seconds), "wall_s": wall, "job_seconds": busy,
            "ideal_s": busy / nodes, "efficiency": busy / nodes / wall}


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


def driver_cost(wanted: int, work: Path) -> DriverCost:
    nodes = simulated_fleet()
    groups = cluster.group_targets(nodes)
    spec = driver_spec(wanted, groups)
    t0 = time.perf_counter()
    plan = expand(spec, REPO, groups)
    t1 = time.perf_counter()
    store = open_store(StoreLocation.resolve(work / f"driver-{wanted}"))
    recorder = Recorder(store)
    recorder.save_targets([schema.Target(id=g.target.id, kind=g.target.kind, name=g.target.name) for g in groups])
    t2 = time.perf_counter()
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
        for job, node in start:
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
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--jobs", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--skip-fleet", action="store_true")
    parser.add_argument("--skip-driver", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "fleet_scaling.json")
    args = parser.parse_args()
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    report: dict[str, Any] = {"machine": {"cpu": describe().cpu.model, "cores": os.cpu_count()}}
    with tempfile.TemporaryDirectory(prefix="farm-scaling-") as tmp:
        work = Path(tmp)
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
            runs = [fleet_run(n, spec_path, work) for n in args.nodes]
            print(f"\n{'nodes':>6}{'jobs':>6}{'wall s':>9}{'job s':>9}{'ideal s':>9}{'efficiency':>12}")
            for run in runs:
                print(f"{run['nodes']:>6}{run['jobs']:>6}{run['wall_s']:>9.1f}{run['job_seconds']:>9.1f}{run['ideal_s']:>9.1f}"
                      f"{run['efficiency']:>12.2f}")
            report["fleet"] = {"spec": FLEET_SPEC, "cpus_per_node": 1, "runs": runs,
                               "speedup_vs_1_node": {str(r["nodes"]): runs[0]["wall_s"] / r["wall_s"] for r in runs}}
        elif "fleet" in previous:
            report["fleet"] = previous["fleet"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
