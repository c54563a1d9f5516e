"""A sweep cold, then again as a new node of the same GPU kind would run it: warm only from the store.

The first run compiles with empty Inductor and Triton cache folders. The second redoes every
stage from the build on (`--redo-from build`: compile, benchmark, fidelity, re-timing) in a
fresh local Ray with new empty cache folders, so the only warm source is the compile caches the
store kept from the first. Prints both runs' wall time and their build, benchmark and fidelity
job times (from the store's sweep_jobs), and the ratio warm / cold.

    python3 benchmarks/warm_sweep.py sweeps/gpu-autotune.yaml --data-dir /tmp/farm-autotune \
        --out benchmarks/results/h100/warm_sweep.json

Goal (issue 23): warm <= 0.25 x cold for compile, benchmark and fidelity together.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TIMED_STAGES = ("build", "benchmark", "fidelity", "retime")


def run_sweep(spec: str, data_dir: str, extra: list[str]) -> dict[str, Any]:
    """One `farm sweep` in a fresh process (and so a fresh local Ray) with empty compile cache folders."""
    with tempfile.TemporaryDirectory(prefix="farm-inductor-") as inductor, tempfile.TemporaryDirectory(prefix="farm-triton-") as triton:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=inductor, TRITON_CACHE_DIR=triton)
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "farm.cli", "sweep", spec, "--data-dir", data_dir, *extra],
                              env=env, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - started
    print(done.stdout[-3000:], file=sys.stderr)
    if done.returncode not in (0, 1):
        raise SystemExit(f"farm sweep {spec} exited {done.returncode}: {done.stderr[-2000:]}")
    return {"seconds": seconds, "returncode": done.returncode, "args": extra}


def job_times(data_dir: str) -> list[dict[str, Any]]:
    """Per sweep (oldest first): seconds per stage summed over its jobs that ran (not cached)."""
    from sqlalchemy import select

    from farm.store import StoreLocation, open_store, schema

    store = open_store(StoreLocation.resolve(Path(data_dir)), readonly=True)
    found = []
    with store.session() as s:
        for sweep in s.scalars(select(schema.Sweep).order_by(schema.Sweep.id)):
            stages: dict[str, float] = {}
            for job in sweep.jobs:
                if job.state == "done" and job.started_at is not None:
                    stages[job.stage] = stages.get(job.stage, 0.0) + (job.updated_at - job.started_at).total_seconds()
            found.append({"sweep": sweep.id, "stages": stages, "timed_stages_s": sum(stages.get(n, 0.0) for n in TIMED_STAGES)})
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec")
    parser.add_argument("--data-dir", required=True, help="a new folder: the cold run must find nothing")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if Path(args.data_dir).exists() and any(Path(args.data_dir).iterdir()):
        raise SystemExit(f"--data-dir {args.data_dir}: not empty; the cold run must start from nothing")
    cold = run_sweep(args.spec, args.data_dir, [])
    warm = run_sweep(args.spec, args.data_dir, ["--redo-from", "build"])
    sweeps = job_times(args.data_dir)
    cold_jobs, warm_jobs = sweeps[0], sweeps[-1]
    result = {
        "spec": args.spec, "cold": cold | cold_jobs, "warm": warm | warm_jobs,
        "wall_ratio": warm["seconds"] / cold["seconds"],
        "timed_stages_ratio": warm_jobs["timed_stages_s"] / cold_jobs["timed_stages_s"] if cold_jobs["timed_stages_s"] else None,
    }
    try:
        import torch

        result["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        result["torch"] = str(torch.__version__)
    except ImportError:
        pass
    print(f"{'run':5} {'wall s':>8} " + " ".join(f"{n + ' s':>12}" for n in TIMED_STAGES))
    for name, run, jobs in (("cold", cold, cold_jobs), ("warm", warm, warm_jobs)):
        print(f"{name:5} {run['seconds']:8.1f} " + " ".join(f"{jobs['stages'].get(n, 0.0):12.1f}" for n in TIMED_STAGES))
    ratio = result["timed_stages_ratio"]
    print(f"warm / cold: wall {result['wall_ratio']:.3f}, build + benchmark + fidelity + retime "
          f"{ratio:.3f}" if ratio is not None else "no timed stage ran cold")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
