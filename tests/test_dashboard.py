"""The dashboard's pages on a seeded store (streamlit.testing AppTest), on SQLite and on PostgreSQL,
and reads during concurrent writes."""

from __future__ import annotations

import ast
import json
import multiprocessing
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import func, select
from streamlit.testing.v1 import AppTest

from farm.results import progress, queries
from farm.results.evidence import CONFIDENT_MARGIN
from farm.results.labels import short_key
from farm.store import StoreLocation, open_store, schema
from tests.conftest import BACKENDS
from tests.postgres import PostgresServer
from tests.seed import CPU, H200, L4, RTX, TRT_O3, TRT_O5, Seeded, beat, seed, seed_bulk

APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
EMPTY_HINT = "farm sweep sweeps/quickstart.yaml"


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    return seed(tmp_path_factory.mktemp("dashboard") / "farm-data")


@pytest.fixture(scope="module")
def seeded_postgresql(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    """The same rows in a PostgreSQL database; the artifacts in a data dir, as on a cluster."""
    url = postgres.new_database()
    yield seed(tmp_path_factory.mktemp("dashboard-postgresql") / "farm-data", url)
    postgres.drop_database(url)


@pytest.fixture()
def seeded_on(request: pytest.FixtureRequest) -> Seeded:
    """The seeded store of the backend a test is parametrized with (indirect=True)."""
    return request.getfixturevalue("seeded" if request.param == "sqlite" else "seeded_postgresql")


def app_on(seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    """The dashboard as `farm dashboard` starts it: the store's location in FARM_DATA_DIR and FARM_DB_URL."""
    beat(seeded.location)  # the seeded running sweep's driver is alive (else it reads as interrupted after a minute)
    monkeypatch.setenv("FARM_DATA_DIR", str(seeded.location.data_dir))
    monkeypatch.setenv("FARM_DB_URL", seeded.location.url)
    return AppTest.from_file(str(APP), default_timeout=30)


@pytest.fixture()
def app(seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    return app_on(seeded, monkeypatch)


def open_page(at: AppTest, page: str) -> AppTest:
    at.run()
    if page != "sweeps":
        at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def frame(at: AppTest, index: int = 0) -> pd.DataFrame:
    return at.dataframe[index].value


def text(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


def test_dashboard_reads_through_farm_only() -> None:
    """docs/architecture.md: the dashboard never imports workers (directly or through farm.results.delivery / farm.results.select)."""
    for script in APP.parent.rglob("*.py"):
        tree = ast.parse(script.read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not {m for m in imported if m.split(".")[0] == "workers"}, script
    code = "import sys, dashboard.data, farm.results.queries; print(sorted(m for m in sys.modules if m.split('.')[0] == 'workers'))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    # workers.stats is plain arithmetic (Wilson, McNemar) that eligibility and the precision fallback share
    assert loaded in ("[]", "['workers', 'workers.stats']"), loaded


@pytest.mark.parametrize("page", ["sweeps", "results", "winners", "curves", "engine", "compare"])
def test_empty_store_explains_what_to_do(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARM_DATA_DIR", str(tmp_path / "nothing-here"))
    monkeypatch.delenv("FARM_DB_URL", raising=False)
    at = open_page(AppTest.from_file(str(APP), default_timeout=30), page)
    assert any(EMPTY_HINT in i.value for i in at.info)
    assert not (tmp_path / "nothing-here").exists(), "the dashboard must not create a store"


def test_an_empty_postgresql_database_explains_what_to_do(postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new database on the server: no tables yet (PostgreSQL says so with a ProgrammingError), the same empty state."""
    monkeypatch.setenv("FARM_DATA_DIR", str(tmp_path / "farm-data"))
    monkeypatch.setenv("FARM_DB_URL", postgres_url)
    at = open_page(AppTest.from_file(str(APP), default_timeout=30), "sweeps")
    assert any(EMPTY_HINT in i.value for i in at.info)


@pytest.mark.parametrize("seeded_on", BACKENDS, indirect=True)
def test_sweeps_page_shows_progress_and_failures(seeded_on: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    seeded = seeded_on
    at = open_page(app_on(seeded, monkeypatch), "sweeps")
    # Newest first: the running sweep, with a progress bar and auto-refresh on.
    assert at.selectbox(key="sweep").value == seeded.sweeps["nightly"]
    assert at.toggle(key=f"auto_refresh-{seeded.sweeps['nightly']}").value is True
    assert len(at.get("progress")) == 1
    stages = frame(at)
    build = stages[stages["stage"] == "build"].iloc[0]
    assert (build["done"], build["pending"], build["total"]) == (15, 2, 17)
    assert any("No failed jobs" in s.value for s in at.success)

    at.selectbox(key="sweep").set_value(seeded.sweeps["fleet"]).run()
    assert at.toggle(key=f"auto_refresh-{seeded.sweeps['fleet']}").value is False
    assert len(at.get("progress")) == 0
    stages = frame(at)
    build = stages[stages["stage"] == "build"].iloc[0]
    assert (build["failed"], build["pending"]) == (1, 0)
    assert stages[stages["stage"] == "benchmark"].iloc[0]["blocked"] == 2
    [failure] = at.expander
    assert "mobilenet_v3_large int8 tensorrt" in failure.label
    assert "no implementation for" in failure.error[0].value
    assert "Error Code 2" in failure.code[0].value


def test_sweeps_page_lists_the_jobs_another_driver_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pending build of the running sweep that another sweep's driver holds the lease of, as `farm status` lists it."""
    from farm.store.record import Recorder

    seeded = seed(tmp_path / "farm-data")  # its own: the lease would show on the shared store's pages
    nightly, fleet = seeded.sweeps["nightly"], seeded.sweeps["fleet"]
    store = open_store(seeded.location)
    with store.session() as s:
        key, label = s.execute(select(schema.SweepJob.key, schema.SweepJob.label).where(
            schema.SweepJob.sweep_id == nightly, schema.SweepJob.stage == "build", schema.SweepJob.state == "pending")).first()
    assert Recorder(store).claim(fleet, "build", key, "elsewhere", datetime.now(UTC)).ours
    at = open_page(app_on(seeded, monkeypatch), "sweeps")
    assert at.selectbox(key="sweep").value == nightly
    [waiting] = [d.value for d in at.dataframe if "run by sweep" in d.value.columns]
    assert waiting[["stage", "job", "run by sweep"]].to_dict("records") == [{"stage": "build", "job": label, "run by sweep": fleet}]


def test_a_sweep_whose_driver_is_gone_reads_interrupted(app: AppTest, seeded: Seeded) -> None:
    """Issue 13: after kill -9 the sweep read "running" forever; its heartbeat says when the driver went."""
    import streamlit as st

    store = open_store(seeded.location)
    with store.session() as s, s.begin():
        s.get(schema.Sweep, seeded.sweeps["nightly"]).heartbeat_at = datetime(2026, 12, 1, 8, 30, 15, tzinfo=UTC)
    store.close()
    st.cache_data.clear()
    at = open_page(app, "sweeps")
    assert at.toggle(key=f"auto_refresh-{seeded.sweeps['nightly']}").value is False  # nothing is running any more
    assert at.metric[0].value == "interrupted (driver gone since 08:30:15 UTC)"
    assert len(at.get("progress")) == 0
    beat(seeded.location)
    st.cache_data.clear()


@pytest.mark.parametrize("seeded_on", BACKENDS, indirect=True)
def test_results_filters(seeded_on: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_page(app_on(seeded_on, monkeypatch), "results")
    everything = frame(at)
    assert len(everything) == 50  # the first page
    at.multiselect(key="f_model").set_value(["resnet50"])
    at.multiselect(key="f_batch").set_value([1]).run()
    rows = frame(at)
    assert set(rows["model"]) == {"resnet50"} and set(rows["batch"]) == {1}
    assert len(rows) == 17  # 6 builds on each GPU, 2 on rtx:sm_89, 3 on the CPU

    at.multiselect(key="f_target").set_value([H200])
    at.multiselect(key="f_precision").set_value(["fp16"]).run()
    assert set(frame(at)["options"]) == {"optimization_level=3 workspace_bytes=8589934592", "optimization_level=5 workspace_bytes=8589934592"}

    for key in ("f_model", "f_batch", "f_target", "f_precision"):
        at.multiselect(key=key).set_value([])
    at.multiselect(key="f_status").set_value(["failed"]).run()
    [failed] = frame(at).to_dict("records")
    assert failed["model"] == "mobilenet_v3_large" and failed["precision"] == "int8" and pd.isna(failed["p50"])
    assert "no implementation" in failed["error"]


def test_results_page_with_10000_builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    location = seed(tmp_path / "farm-data").location
    seed_bulk(location, 10_000)
    monkeypatch.setenv("FARM_DATA_DIR", str(location.data_dir))
    at = AppTest.from_file(str(APP), default_timeout=30)
    at.run()
    # How fast it renders is benchmarks/' business; here: it renders one page of it, not all 10,000 rows.
    at.switch_page("views/results.py").run()
    assert not at.exception
    assert len(frame(at)) == 50
    assert any("10097 rows" in c.value for c in at.caption)  # 97 seeded rows + 10,000
    assert at.number_input(key="page").max == 202
    first_page = set(frame(at)["build_key"])
    at.number_input(key="page").set_value(150).run()
    assert not at.exception and len(frame(at)) == 50
    assert set(frame(at)["build_key"]).isdisjoint(first_page)
    at.multiselect(key="f_target").set_value([L4]).run()
    assert at.number_input(key="page").value == 1  # a new filter starts at the first page
    assert set(frame(at)["target"]) == {L4}


def winner_of(at: AppTest, model: str, target: str, batch: int) -> str:
    """The winner's short key: the first word of its cell (`1a2b3c4d tensorrt fp16 ...`)."""
    table = frame(at)
    row = table[(table["model"] == model) & (table["target"] == target) & (table["batch"] == batch)]
    assert len(row) == 1, table
    return str(row.iloc[0]["winner"]).split()[0]


@pytest.mark.parametrize("seeded_on", BACKENDS, indirect=True)
def test_winners_follow_the_objective_and_the_floor(seeded_on: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    seeded = seeded_on
    at = open_page(app_on(seeded, monkeypatch), "winners")
    labels = {key: label for label, key in seeded.builds.items()}
    fp16_o3, fp16_o5, int8 = (seeded.key("resnet50", precision, "tensorrt", level, H200)
                              for precision, level in (("fp16", TRT_O3), ("fp16", TRT_O5), ("int8", TRT_O3)))

    assert winner_of(at, "resnet50", H200, 1) == short_key(fp16_o3)  # lowest p50
    assert labels[fp16_o3] in text(at)  # named in full beside its download button
    answer = frame(at).query("model == 'resnet50' and target == @H200 and batch == 1").iloc[0]
    # the runner-up is named by its key too, and the labels keep only the option that tells the two apart
    assert answer["winner"] == f"{short_key(fp16_o3)} tensorrt fp16 optimization_level=3"
    assert answer["runner-up"] == f"{short_key(fp16_o5)} tensorrt fp16 optimization_level=5"
    assert answer["verdict"].startswith("winner")
    assert any(f"**resnet50** on `{H200}`, batch 1: " in m.value for m in at.markdown)  # its verdict, not collapsed
    numbers = frame(at, 1).query("model == 'resnet50' and target == @H200 and batch == 1").iloc[0]
    assert numbers["key"] == short_key(fp16_o3) and numbers["vs torch"] == "5.19x" and numbers["vs fp32"] == "2.00x"

    at.radio(key="objective").set_value("throughput").run()
    assert winner_of(at, "resnet50", H200, 1) == short_key(fp16_o5)  # steadier, so more samples per second
    at.radio(key="objective").set_value("p99").run()
    assert winner_of(at, "resnet50", H200, 1) == short_key(fp16_o5)

    # what the floor excluded is an answer too: int8 at 0.985 misses 0.99, with its numbers and reason
    [excluded] = [d.value for d in at.dataframe if "reason" in d.value.columns]
    int8_rows = excluded.query("model == 'resnet50' and target == @H200 and batch == 1 and engine.str.contains('int8')")
    assert len(int8_rows) == 1 and "top-1 agreement 0.985 < 0.99" in int8_rows.iloc[0]["reason"]
    assert any("Rule: eligible when" in c.value for c in at.caption)

    at.radio(key="objective").set_value("p50")
    at.slider(key="floor").set_value(0.98).run()
    assert winner_of(at, "resnet50", H200, 1) == short_key(int8)  # top-1 agreement 0.985 is now enough
    assert labels[int8] in text(at)

    at.slider(key="floor").set_value(1.0).run()
    assert {" ".join(frame(at)["winner"].iloc[i].split()[1:3]) for i in range(len(frame(at)))} <= {"torch fp32", "onnxruntime fp32"}


def test_winners_page_draws_a_pareto_chart_per_target_and_offers_downloads(app: AppTest, seeded: Seeded) -> None:
    at = open_page(app, "winners")
    assert at.selectbox(key="pareto_model").value == "efficientnet_b0"
    at.selectbox(key="pareto_model").set_value("resnet50").run()
    charts = at.get("plotly_chart")
    assert len(charts) == 4  # H200, L4, rtx:sm_89, CPU
    winners_shown = {str(r).split()[0] for r in frame(at)["winner"]}
    buttons = at.get("download_button")
    assert len(buttons) == len(winners_shown)

    at.selectbox(key="winners_sweep").set_value(seeded.sweeps["nightly"]).run()
    assert set(frame(at)["model"]) == {"efficientnet_b0"}


def test_engine_page(app: AppTest, seeded: Seeded) -> None:
    key = seeded.key("resnet50", "int8", "tensorrt", TRT_O3, H200)
    app.query_params["build"] = key
    at = open_page(app, "engine")
    assert at.selectbox[0].value == key
    assert any(key in c.value for c in at.caption)
    assert len(at.get("download_button")) == 3
    assert len(at.get("plotly_chart")) == 1  # the latency histogram
    assert at.json[0].value  # the manifest
    [layers] = [d.value for d in at.dataframe if "LayerType" in d.value.columns]  # the engine inspector's JSON
    assert len(layers) == 16 and layers["Outputs"].str.contains("Int8").all()
    assert "Optimization profile" in at.code[0].value  # the build log
    # peak memory, of the build (host and GPU) and of each benchmark, as recorded
    shown = {m.label: m.value for m in at.metric}
    assert shown["Build memory"] == "2,500 MB" and shown["Build GPU memory"] == "4,200 MB"
    timings = next(d.value for d in at.dataframe if "host MB" in d.value.columns)
    store = open_store(seeded.location, readonly=True)
    with store.session() as s:
        stored = {b.batch_size: (b.peak_host_memory_bytes / 1e6, b.peak_device_memory_bytes / 1e6)
                  for b in s.scalars(select(schema.Benchmark).where(schema.Benchmark.build_key == key))}
    assert {r["batch_size"]: (r["host MB"], r["device MB"]) for r in timings.to_dict("records")} == stored

    at.radio(key="histogram_batch").set_value(8).run()
    assert not at.exception

    at.button(key="to_compare").click().run()
    assert at.session_state["compare_a"] == key
    assert at.title[0].value == "Compare"


def test_curves_page_draws_each_engines_latency_and_throughput_against_batch_size(app: AppTest, seeded: Seeded) -> None:
    at = open_page(app, "curves")
    at.selectbox(key="curves_model").set_value("resnet50").run()
    charts = at.get("plotly_chart")
    assert len(charts) == 2 * len((H200, L4, RTX, CPU))  # latency and throughput per target resnet50 was timed on
    latency = json.loads(charts[0].proto.spec)["data"]
    fp16 = seeded.key("resnet50", "fp16", "tensorrt", TRT_O3, H200)
    p50 = next(t for t in latency if t["name"].startswith(short_key(fp16)) and t["name"].endswith("p50"))
    store = open_store(seeded.location, readonly=True)
    with store.session() as s:
        stored = dict(s.execute(select(schema.Benchmark.batch_size, schema.Benchmark.latency_p50)
                                .where(schema.Benchmark.build_key == fp16, schema.Benchmark.status == "ok")).all())
    assert dict(zip(p50["x"], p50["y"], strict=True)) == stored and len(stored) > 1  # one point per batch size it was timed at
    assert {t["name"].rsplit(" ", 1)[1] for t in latency} == {"p50", "p99"}


def test_engine_page_shows_each_flipped_image_with_fp32s_margin(app: AppTest, seeded: Seeded) -> None:
    key = seeded.key("resnet50", "int8", "tensorrt", TRT_O3, H200)
    app.query_params["build"] = key
    at = open_page(app, "engine")
    flips = next(d.value for d in at.dataframe if "fp32 margin" in d.value.columns)
    store = open_store(seeded.location, readonly=True)
    with store.session() as s:
        fidelity = s.scalars(select(schema.Fidelity).where(schema.Fidelity.build_key == key)).one()
        noise = s.get(schema.Reference, fidelity.reference_key).noise_floor
    stored = fidelity.evidence
    assert sorted(flips["image"]) == sorted(stored["flipped"]) and len(flips) > 0
    for row in flips.to_dict("records"):
        margin = stored["margins"][row["image"]]
        assert row["fp32 margin"] == margin and row["confident"] == (margin >= CONFIDENT_MARGIN)
        assert row["fp32 flips it too"] == (row["image"] in noise["flipped"])
    assert list(flips["fp32 margin"]) == sorted(flips["fp32 margin"], reverse=True)  # surest of fp32's first


def test_engine_page_takes_a_short_key_and_says_when_one_is_ambiguous(app: AppTest, seeded: Seeded) -> None:
    key = seeded.key("resnet50", "int8", "tensorrt", TRT_O3, H200)
    app.query_params["build"] = key[:8]  # the short key `farm best` prints
    at = open_page(app, "engine")
    assert at.selectbox[0].value == key and not at.warning
    shared = seeded.ambiguous_prefix()
    at.query_params["build"] = shared
    at.session_state["engine_build"] = None
    at.run()
    assert len(at.warning) == 1 and "ambiguous" in at.warning[0].value and "\n" not in at.warning[0].value


def test_engine_page_of_a_failed_build(app: AppTest, seeded: Seeded) -> None:
    app.session_state["engine_build"] = seeded.failed_build
    at = open_page(app, "engine")
    assert "no implementation for" in at.error[0].value
    assert not at.get("download_button")
    assert "Error Code 2" in at.code[0].value


def test_compare_page(app: AppTest, seeded: Seeded) -> None:
    app.session_state["compare_a"] = seeded.key("resnet50", "fp16", "tensorrt", TRT_O3, H200)
    app.session_state["compare_b"] = seeded.key("resnet50", "fp16", "tensorrt", TRT_O5, H200)
    at = open_page(app, "compare")
    summary, timings, options, manifest = (frame(at, i) for i in range(4))
    assert not summary.set_index("field").loc["precision", "differs"]
    level = options.set_index("field").loc["optimization level"]  # labelled, not the raw key
    assert (level["A"], level["B"], level["differs"]) == ("3", "5", True)
    p99 = timings[(timings["batch"] == 1) & (timings["metric"] == "p99 ms")].iloc[0]
    assert p99["ratio"] < 0.5 and p99["B / A"] == f"{p99['ratio']:.2f}x"  # level 5 has no tail
    assert all(len(value.split(".")[-1]) <= 3 for value in timings["A"] if "." in value)  # rounded as farm.results.metrics formats them
    assert "options › optimization level" in set(manifest["field"]) and manifest["differs"].all()
    assert "optimization_level" in at.code[0].value  # the unified diff
    [histogram] = at.get("plotly_chart")  # both builds' iterations, overlaid
    spec = json.loads(histogram.proto.spec)
    assert [t["type"] for t in spec["data"]] == ["histogram", "histogram"] and spec["layout"]["barmode"] == "overlay"


def test_compare_opens_on_two_timed_builds(app: AppTest) -> None:
    """Issue 13: it opened on the two newest builds, which had no timings (a failed build, an rtx one)."""
    at = open_page(app, "compare")
    timings = frame(at, 1)
    assert set(timings["A"]) - {"-"} and set(timings["B"]) - {"-"}
    assert at.get("plotly_chart")


# --- reading while the driver writes -----------------------------------------------------------


def _write_rows(location: StoreLocation, rows: int, started: Any) -> None:
    """The driver's side: one short transaction per job, as farm.store.record does."""
    store = open_store(location)
    started.set()
    for i in range(rows):
        with store.session() as s, s.begin():
            s.add(schema.SweepJob(sweep_id=1, stage="build", key=f"concurrent-{i:05d}", label=f"job {i}", state="done"))
    store.close()


def test_reads_while_a_sweep_writes(tmp_path: Path) -> None:
    """SQLite in WAL mode: the read-only dashboard store never sees 'database is locked' and sees rows arrive."""
    seeded = seed(tmp_path / "farm-data")
    context = multiprocessing.get_context("spawn")
    started = context.Event()
    writer = context.Process(target=_write_rows, args=(seeded.location, 1500, started))
    writer.start()
    reader = open_store(seeded.location, readonly=True)
    seen: list[int] = []
    errors: list[Exception] = []
    try:
        assert started.wait(60)
        while writer.is_alive() or len(seen) < 3:
            try:
                with reader.session() as s:
                    seen.append(s.scalar(select(func.count()).select_from(schema.SweepJob).where(schema.SweepJob.key.like("concurrent-%"))) or 0)
                    progress.stage_progress(s, 1)
                    queries.results(s, queries.Filters(), 50, 0)
            except Exception as exc:  # noqa: BLE001 - every failure counts, "database is locked" above all
                errors.append(exc)
        writer.join(60)
    finally:
        reader.close()
    assert writer.exitcode == 0
    assert not errors, errors[:3]
    assert seen == sorted(seen), "counts never go backwards"
    assert len(set(seen)) > 3, f"reads should see the rows arrive, saw {sorted(set(seen))[:10]}"
    with open_store(seeded.location, readonly=True).session() as s:
        assert s.scalar(select(func.count()).select_from(schema.SweepJob).where(schema.SweepJob.key.like("concurrent-%"))) == 1500
