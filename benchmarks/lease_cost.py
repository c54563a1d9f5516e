"""What job leases cost the driver: its loop over 1,000 and 10,000 simulated jobs on real SQLite
(benchmarks/fleet_scaling.py's driver part), with leases (a claim per job in place of "running", the
release in the row's own transaction, every lease renewed by the heartbeat) and without (a job only
marked running), run in turns so that both see the same machine. Prints a table and writes JSON.

    .venv/bin/python benchmarks/lease_cost.py [--jobs 1000 10000] [--repeats 5] [--out benchmarks/results/lease_cost.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from fleet_scaling import DriverCost, driver_cost  # noqa: E402
from workers.device import describe  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each kind per job count, alternating (median shown)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "lease_cost.json")
    args = parser.parse_args()
    runs: dict[str, dict[str, list[DriverCost]]] = {}
    with tempfile.TemporaryDirectory(prefix="farm-leases-") as tmp:
        for jobs in args.jobs:
            by_kind: dict[str, list[DriverCost]] = {"without": [], "with": []}
            for repeat in range(args.repeats):
                for kind in by_kind:
                    folder = Path(tmp) / f"{jobs}-{kind}-{repeat}"
                    by_kind[kind].append(driver_cost(jobs, folder, leases=kind == "with"))
            runs[str(jobs)] = by_kind
    print(f"{'jobs':>7}{'leases':>9}{'schedule':>10}{'record':>10}{'total':>10}{'per job':>10}{'record/job':>12}{'best/job':>10}"
          f"   (s; per job in ms; median of {args.repeats}, best: the fastest run's, what a quiet machine gives)")
    report: dict[str, object] = {"machine": {"cpu": describe().cpu.model}, "store": "sqlite", "repeats": args.repeats, "runs": []}
    for jobs, by_kind in runs.items():
        for kind, costs in by_kind.items():
            schedule_s = statistics.median(c.schedule_s for c in costs)
            record_s = statistics.median(c.record_s for c in costs)
            total_s = statistics.median(c.total_s for c in costs)
            n = costs[0].jobs
            best_ms = min(c.total_s for c in costs) / n * 1e3
            print(f"{n:>7}{kind:>9}{schedule_s:>10.2f}{record_s:>10.2f}{total_s:>10.2f}{total_s / n * 1e3:>10.2f}{record_s / n * 1e3:>12.2f}"
                  f"{best_ms:>10.2f}")
            report["runs"].append({"jobs": n, "leases": kind == "with", "schedule_s": schedule_s, "record_s": record_s,  # type: ignore[attr-defined]
                                   "total_s": total_s, "total_per_job_ms": total_s / n * 1e3, "record_per_job_ms": record_s / n * 1e3,
                                   "best_total_per_job_ms": best_ms,
                                   "each": [c.row() for c in costs]})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
