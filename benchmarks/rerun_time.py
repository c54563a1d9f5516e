"""How long `farm sweep SPEC` takes when the store already holds every job: what a user waits for a re-run.

Runs the real CLI in fresh processes (interpreter start and imports included, as a user sees it): once
cold when the data dir holds no finished sweep of the spec, then `--runs` re-runs, each timed from
process start to exit. Prints a table and writes JSON (the README's quickstart re-run figure):

    python3 benchmarks/rerun_time.py sweeps/quickstart.yaml --data-dir /tmp/farm-rerun \
        --out benchmarks/results/rerun_quickstart.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workers.device import describe  # noqa: E402


@dataclass(frozen=True)
class Run:
    kind: str  # cold | re-run
    seconds: float
    exit_code: int


def timed_sweep(spec: Path, data_dir: Path, kind: str) -> Run:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "farm.cli", "sweep", str(spec), "--data-dir", str(data_dir)],
                          capture_output=True, text=True, cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 1):
        sys.exit(f"farm sweep exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return Run(kind, seconds, done.returncode)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--data-dir", type=Path, required=True, help="kept between calls: a second call times re-runs only")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    runs: list[Run] = []
    if not (args.data_dir / "farm.db").exists():
        runs.append(timed_sweep(args.spec, args.data_dir, "cold"))
    runs += [timed_sweep(args.spec, args.data_dir, "re-run") for _ in range(args.runs)]
    reruns = [r.seconds for r in runs if r.kind == "re-run"]
    device = describe()
    row = {
        "spec": str(args.spec),
        "date": datetime.now(UTC).date().isoformat(),
        "machine": {"cpu": device.cpu.model, "isa": device.cpu.isa_level, "cores": device.cpu.logical_cores},
        "runs": [asdict(r) for r in runs],
        "rerun_median_s": statistics.median(reruns),
    }
    print(f"{'run':8} {'seconds':>8}  exit")
    for run in runs:
        print(f"{run.kind:8} {run.seconds:8.1f}  {run.exit_code}")
    print(f"re-run median {row['rerun_median_s']:.1f} s on {device.cpu.model} ({device.cpu.logical_cores} cores)")
    if args.out:
        args.out.write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":
    main()
