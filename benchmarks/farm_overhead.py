"""What the farm costs: the same N small jobs through the farm on local Ray, and called directly in one process.

The jobs: one model's fp32 reference, then N ONNX Runtime builds (every combination of thread
count and graph optimisation level), each benchmarked for a fixed number of iterations at batch 1
and compared with the reference. The direct path calls the same workers.stage_work functions in
order; the farm path runs `farm sweep` machinery (Ray tasks, store writes, artifacts). Both run
side by side in one process, alternating, so machine noise hits both.

The model is exported once, before any timing, on both sides (the farm keeps an export in its
store across sweeps; each timed sweep redoes everything from the reference on, as
`--redo-from reference` does). Timing the export made the ratio a coin toss: its cost is
PyTorch's first import in whichever process runs it (3.4 s in a process new to PyTorch, 0.6 s
after), and the direct path's process had it from the previous repeat while the farm's export
landed on any warm Ray worker. Ray's start is not timed either (a fleet is already running), and
one untimed sweep first warms the Ray workers, as the direct path's process has farm imported.

    .venv/bin/python benchmarks/farm_overhead.py [--model tiny|resnet18] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from farm.run.cluster import WARM_WORKERS  # noqa: E402
from farm.run.driver import run_sweep  # noqa: E402
from farm.run.spec import SweepSpec  # noqa: E402
from farm.run.stages import BuildJob, stages_from  # noqa: E402
from farm.store import Store, StoreLocation, open_store  # noqa: E402
from workers import stage_work  # noqa: E402
from farm.run.driver import load_rows  # noqa: E402
from farm.run.plan import data_refs  # noqa: E402
from workers.device import describe  # noqa: E402
from workers.models import Exported  # noqa: E402
from workers.structs import BuildRequest  # noqa: E402

MODELS = {
    # seconds of farm bookkeeping against milliseconds of work: the worst case for the farm
    "tiny": {"name": "tiny", "source": "tests.models:tiny_cnn", "weights": None, "input_shape": [3, 32, 32]},
    # jobs of a realistic size: builds and timings of a real classifier
    "resnet18": {"name": "resnet18", "source": "torchvision:resnet18", "weights": None, "input_shape": [3, 224, 224]},
}
SPEC = {
    "name": "overhead",
    "batch_sizes": [1],
    "backends": {"onnxruntime": {"intra_op_threads": [1, 2], "graph_optimization_level": ["disable", "basic", "extended", "all"]}},
    "benchmark": {"warmup_s": 0.0, "duration_s": 0.0, "min_iterations": 50, "max_iterations": 50},
    "calibration": {"data": str(REPO / "calibration_data")},
    "fidelity": {"samples": 8},
    "selection": {"retime": {"enabled": False}},  # the direct path re-times nothing: the same jobs on both sides
}


def direct(spec: SweepSpec, exported: Exported) -> float:
    """Every job of the sweep after the export, called in order in this process: no Ray, no store."""
    started = time.perf_counter()
    model_spec = spec.models[0]
    model = model_spec.ref(REPO)
    inputs, _labels = load_rows(data_refs(spec, REPO, model_spec)[1])
    reference = stage_work.reference_outputs(exported.onnx_bytes, inputs, 1)
    target = describe().targets()[0]
    for options in [o for block in spec.backends.onnxruntime or [] for o in block.combinations()]:
        engine = stage_work.build_engine(BuildRequest(model, "fp32", "onnxruntime", options, target, (1,)), exported.onnx_bytes, None)
        stage_work.benchmark_engine(engine.data, engine.manifest, 1, spec.benchmark.settings())
        stage_work.engine_fidelity(engine.data, engine.manifest, inputs, reference, 1)
    return time.perf_counter() - started


def through_farm(spec: SweepSpec, store: Store, isolate: bool, redo: frozenset[str]) -> tuple[float, int]:
    spec = spec.model_copy(update={"limits": spec.limits.model_copy(update={"isolate_builds": isolate})})
    started = time.perf_counter()
    result = run_sweep(spec, REPO, "overhead", store, redo=redo)
    elapsed = time.perf_counter() - started
    if failed := {k: e for k, e in result.errors.items()}:
        raise SystemExit(f"farm path failed, its time would mean nothing: {next(iter(failed.values()))}")
    return elapsed, len([j for j in result.plan.jobs if isinstance(j, BuildJob)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results/farm_overhead_MODEL.json")
    args = parser.parse_args()
    out = args.out or REPO / "benchmarks" / "results" / f"farm_overhead_{args.model}.json"

    import ray

    spec = SweepSpec.model_validate(SPEC | {"models": [MODELS[args.model]]})
    os.environ["PYTHONPATH"] = str(REPO)  # Ray's workers import the tests.models factory too
    ray_started = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False, _system_config=WARM_WORKERS)  # as `farm sweep` starts it
    ray_start_s = time.perf_counter() - ray_started
    direct_s: list[float] = []
    farm_s: list[float] = []
    shared_s: list[float] = []
    builds = 0
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(StoreLocation.resolve(Path(tmp)))
        exported = stage_work.export_model(spec.models[0].ref(REPO))
        through_farm(spec, store, isolate=True, redo=frozenset())  # untimed: the export, and warm Ray workers
        redo = stages_from("reference")
        for _ in range(args.repeats):
            direct_s.append(direct(spec, exported))
            elapsed, builds = through_farm(spec, store, isolate=True, redo=redo)
            farm_s.append(elapsed)
            elapsed, builds = through_farm(spec, store, isolate=False, redo=redo)
            shared_s.append(elapsed)
        store.close()
    ray.shutdown()

    row = {
        "model": args.model,
        "jobs": {"builds": builds, "benchmarks": builds, "fidelity": builds, "references": 1},
        "untimed": "the export (once per model, before the runs) and Ray's start",
        "repeats": args.repeats,
        "direct_s": direct_s,
        "farm_s": farm_s,
        "direct_median_s": statistics.median(direct_s),
        "farm_median_s": statistics.median(farm_s),
        "farm_shared_s": shared_s,
        "farm_shared_median_s": statistics.median(shared_s),
        "ratio_farm_over_direct": statistics.median(farm_s) / statistics.median(direct_s),
        "ratio_farm_shared_over_direct": statistics.median(shared_s) / statistics.median(direct_s),
        "ray_start_s": ray_start_s,
        "machine": {"cpu": describe().cpu.model, "cores": describe().cpu.logical_cores},
    }
    print(f"{'path':<40}{'median s':>10}{'ratio':>8}   runs")
    for label, runs in (("direct (one process)", direct_s), ("farm, a forked process per build", farm_s),
                        ("farm, isolate_builds: false", shared_s)):
        ratio = statistics.median(runs) / statistics.median(direct_s)
        print(f"{label:<40}{statistics.median(runs):>10.2f}{ratio:>7.2f}x   {', '.join(f'{t:.2f}' for t in runs)}")
    print(f"{builds} builds + {builds} benchmarks + {builds} fidelity + 1 reference per run; "
          f"the export (once, before) and Ray's start ({ray_start_s:.1f} s) not included")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
