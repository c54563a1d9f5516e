"""How long each dashboard page takes to render on a seeded store, and on one with 10,000 more builds.

Streamlit's AppTest runs the real app script (dashboard/app.py) against a real SQLite store seeded by
tests/seed.py: each page is opened `--runs` times in a fresh AppTest (the first run of a session
included: the store is opened, nothing is cached yet), and the results page is also turned to a later
page. Prints a table of medians and writes JSON (what tests/test_dashboard.py no longer asserts):

    python3 benchmarks/dashboard_render.py --out benchmarks/results/cpu/dashboard_render.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streamlit.testing.v1 import AppTest  # noqa: E402

from tests.seed import H200, TRT_O3, Seeded, beat, seed, seed_bulk  # noqa: E402
from workers.device import describe  # noqa: E402

APP = ROOT / "dashboard" / "app.py"
PAGES = ("sweeps", "results", "winners", "curves", "compare", "engine")


@dataclass(frozen=True)
class Timing:
    store: str  # seeded | seeded+N
    page: str
    runs_s: list[float]

    @property
    def median_s(self) -> float:
        return statistics.median(self.runs_s)


def _app(seeded: Seeded, build: str | None) -> AppTest:
    beat(seeded.location)  # the seeded running sweep reads as running, as in the tests
    os.environ["FARM_DATA_DIR"] = str(seeded.location.data_dir)
    os.environ["FARM_DB_URL"] = seeded.location.url
    at = AppTest.from_file(str(APP), default_timeout=120)
    if build:
        at.query_params["build"] = build
    return at


def _open(seeded: Seeded, page: str, build: str) -> tuple[AppTest, float]:
    """A fresh session opened on `page`; the seconds from its first run to the page drawn."""
    at = _app(seeded, build if page == "engine" else None)
    started = time.perf_counter()
    at.run()
    if page != "sweeps":
        at.switch_page(f"views/{page}.py").run()
    seconds = time.perf_counter() - started
    if at.exception:
        sys.exit(f"{page}: {[e.value for e in at.exception]}")
    return at, seconds


def _opened_in(seeded: Seeded, page: str, build: str) -> float:
    return _open(seeded, page, build)[1]


def _turn_page(seeded: Seeded, build: str) -> float:
    at, _ = _open(seeded, "results", build)
    last = at.number_input(key="page").max
    assert last is not None, "the results page has no page count"
    wanted = max(1, int(last) * 3 // 4)
    started = time.perf_counter()
    at.number_input(key="page").set_value(wanted).run()
    seconds = time.perf_counter() - started
    if at.exception or at.number_input(key="page").value != wanted:
        sys.exit(f"results: the page did not turn to {wanted}: {[e.value for e in at.exception]}")
    return seconds


def measure(name: str, seeded: Seeded, runs: int) -> list[Timing]:
    build = seeded.key("resnet50", "int8", "tensorrt", TRT_O3, H200)
    cases: dict[str, Callable[[], float]] = {page: partial(_opened_in, seeded, page, build) for page in PAGES}
    cases["results, a later page"] = lambda: _turn_page(seeded, build)
    timings = []
    for page, timed in cases.items():
        timings.append(Timing(name, page, [round(timed(), 3) for _ in range(runs)]))
        print(f"{name:16} {page:24} {timings[-1].median_s:6.2f} s", file=sys.stderr, flush=True)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bulk", type=int, default=10_000, help="builds added to the second store (0: only the seeded one)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu" / "dashboard_render.json")
    args = parser.parse_args()
    for name in list(logging.root.manager.loggerDict):  # bare-mode notices from every run, not findings
        if name.startswith("streamlit"):
            logging.getLogger(name).setLevel(logging.ERROR)

    work = Path(tempfile.mkdtemp(prefix="farm-dashboard-"))
    try:
        timings = measure("seeded", seed(work / "seeded"), args.runs)
        if args.bulk:
            os.environ.pop("FARM_DB_URL")  # the first store's, which seeding would read as where to write
            bulky = seed(work / "bulk")
            seed_bulk(bulky.location, args.bulk)
            timings += measure(f"seeded+{args.bulk}", bulky, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"{'store':16} {'page':24} {'median s':>8}  runs")
    for t in timings:
        print(f"{t.store:16} {t.page:24} {t.median_s:8.2f}  {', '.join(f'{r:.2f}' for r in t.runs_s)}")
    device = describe()
    result = {
        "date": datetime.now(UTC).date().isoformat(),
        "machine": {"cpu": device.cpu.model, "isa": device.cpu.isa_level, "cores": device.cpu.logical_cores,
                    "load_average_1min": os.getloadavg()[0]},
        "runs": args.runs,
        "timings": [asdict(t) | {"median_s": t.median_s} for t in timings],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
