"""How well the driver's scheduling alone could scale a measured fleet run: the real Schedule and Placement
(farm.run.schedule) replayed on simulated time, with each job taking its stage's mean seconds as measured.

    .venv/bin/python benchmarks/placement_sim.py benchmarks/results/h100/fleet_scaling_16core.json [--gaps 0 0.1 0.2]

Input: a JSON of `benchmarks/fleet_scaling.py --device-hosts` (its spec, and per run the job seconds by stage).
For each run, the plan of that spec is expanded for the run's nodes (each its own host, as the run had them) and
replayed: every job lasts its stage's mean in that run, plus a fixed `gap` (the time between a job ending on a
worker and the next one starting there: Ray's return, the driver's bookkeeping, the next task's start). The
simulated span is compared with the measured one (first job start to last job end). Where the simulation at a
gap that matches the 1-node span reaches a much shorter N-node span than measured, the scheduling is not what
limits scaling: the difference is time the simulation does not have (a driver busy with one job's artifacts
while another host waits, a worker process starting, contention between nodes of one machine).
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from farm.run import cluster  # noqa: E402
from farm.run.plan import expand  # noqa: E402
from farm.run.schedule import Placement, Schedule  # noqa: E402
from farm.run.spec import SweepSpec  # noqa: E402
from workers.device import describe  # noqa: E402


def simulated_span(spec: SweepSpec, nodes: int, cpus: int, seconds: dict[str, float], gap: float, patience_s: float) -> float:
    """Seconds from the first job's start to the last job's end when each job of `spec`'s plan lasts
    `seconds[stage] + gap` on a fleet of `nodes` nodes of `cpus` CPUs, each its own host."""
    base = describe()
    fleet = [cluster.Node(f"{i:056x}", cpus, 0, replace(base, hostname=f"node-{i}", host_id=f"host-{i}", gpus=(),
                                                         backends={"onnxruntime": "1.0"})) for i in range(nodes)]
    groups = cluster.group_targets(fleet)
    plan = expand(spec, REPO, groups)
    now = 0.0
    placement = Placement(groups, {n.node_id: (n.device.host_id, n.cpus) for n in fleet}, patience_s=patience_s)
    schedule = Schedule(plan.jobs, max_inflight=nodes * cpus, timeout_s=float("inf"), clock=lambda: now, placement=placement)
    ends: list[tuple[float, str]] = []
    while not schedule.finished:
        started, _ended = schedule.advance()
        for job, _node in started:
            heapq.heappush(ends, (now + seconds.get(job.stage, 0.0) + gap, job.key))
        if not ends:
            raise RuntimeError("the simulated fleet cannot run the plan")
        now, key = heapq.heappop(ends)  # one job ends per turn, as the driver's ray.wait(num_returns=1) gives them
        schedule.finish(key, "done")
    return now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("measured", type=Path, help="a JSON written by benchmarks/fleet_scaling.py --device-hosts")
    parser.add_argument("--gaps", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3], help="seconds between jobs on a worker")
    parser.add_argument("--out", type=Path, default=None, help="default: beside the input, *_sim.json")
    args = parser.parse_args()
    measured = json.loads(args.measured.read_text())
    hosts = measured["hosts"]
    spec = SweepSpec.model_validate(hosts["spec"])
    patience = spec.limits.timing_patience_s
    runs = [r for r in hosts["runs"] if "stage_seconds" in r]
    if not runs or runs[0]["nodes"] != 1:
        raise SystemExit(f"{args.measured}: no 1-node run with job seconds by stage (fleet_scaling.py before they were recorded?)")
    counts = stage_counts(spec)
    one = runs[0]
    rows: list[dict[str, Any]] = []
    print(f"{'gap s':>6}{'nodes':>7}{'sim span':>10}{'measured':>10}{'sim T1/(N*TN)':>15}{'measured':>10}")
    for gap in args.gaps:
        spans = {r["nodes"]: simulated_span(spec, r["nodes"], r["cpus_per_node"], mean_seconds(r, counts), gap, patience) for r in runs}
        for run in runs:
            fixed = run["wall_s"] - run["jobs_span_s"]  # the driver's start and end, which no placement changes
            sim_eff = (spans[1] + one["wall_s"] - one["jobs_span_s"]) / (run["nodes"] * (spans[run["nodes"]] + fixed))
            rows.append({"gap_s": gap, "nodes": run["nodes"], "simulated_span_s": round(spans[run["nodes"]], 2),
                         "measured_span_s": round(run["jobs_span_s"], 2), "simulated_efficiency": round(sim_eff, 3),
                         "measured_efficiency": round(run["scaling_efficiency"], 3)})
            print(f"{gap:>6.2f}{run['nodes']:>7}{spans[run['nodes']]:>10.1f}{run['jobs_span_s']:>10.1f}{sim_eff:>15.2f}"
                  f"{run['scaling_efficiency']:>10.2f}")
    print("efficiency: the measured time before the first job and after the last added to the simulated span")
    out = args.out or args.measured.with_name(args.measured.stem + "_sim.json")
    out.write_text(json.dumps({"measured": str(args.measured),
                               "date": measured.get("date"), "rows": rows}, indent=2))
    print(f"wrote {out}")


def stage_counts(spec: SweepSpec) -> dict[str, int]:
    """Jobs per stage in the plan of `spec` (the same for any number of nodes of one kind)."""
    base = describe()
    node = cluster.Node("0" * 56, 1, 0, replace(base, host_id="host-0", gpus=(), backends={"onnxruntime": "1.0"}))
    counts: dict[str, int] = {}
    for job in expand(spec, REPO, cluster.group_targets([node])).jobs:
        counts[job.stage] = counts.get(job.stage, 0) + 1
    return counts


def mean_seconds(run: dict[str, Any], counts: dict[str, int]) -> dict[str, float]:
    return {stage: total / counts[stage] for stage, total in run["stage_seconds"].items() if counts.get(stage)}


if __name__ == "__main__":
    main()
