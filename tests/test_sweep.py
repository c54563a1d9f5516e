"""End to end on a real local Ray cluster: a sweep records rows and artifacts, resumes, and survives bad inputs."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import onnx
import pytest
from onnx import TensorProto, helper
from sqlalchemy import func, select
from typer.testing import CliRunner

from farm.cli import app
from farm.run.driver import SweepResult, run_sweep
from farm.run.jobs import Plan
from farm.run.plan import expand
from farm.results.select import Constraints, candidates, winners
from farm.run.spec import SweepSpec, load_spec
from farm.store import Store, schema
from tests.conftest import CALIBRATION_DATA, write_spec

# the store, the spec and its folder, the result and the (stage, state) events of the first sweep
FirstRun = tuple[Store, SweepSpec, Path, SweepResult, list[tuple[str, str]]]

pytestmark = pytest.mark.slow

SPEC = f"""
name: e2e
models:
  - {{name: mobilenet, source: "torchvision:mobilenet_v3_small", weights: null, input_shape: [3, 96, 96]}}
  - {{name: tiny, source: "tests.models:tiny_cnn", weights: null, input_shape: [3, 32, 32]}}
  - {{name: custom_op, source: custom_op.onnx, weights: null, input_shape: [3, 32, 32]}}
  - {{name: garbage, source: garbage.onnx, weights: null, input_shape: [3, 32, 32]}}
batch_sizes: [1, 2]
backends:
  onnxruntime: {{intra_op_threads: 1}}
  torch: {{}}
benchmark: {{warmup_s: 0.0, duration_s: 0.1, min_iterations: 3, window_s: 0.05, max_duration_s: 0.3}}
fidelity: {{data: {CALIBRATION_DATA}, samples: 4, min_top1_agreement: 0.99}}
"""


def _custom_op_model() -> bytes:
    """Valid ONNX that no runtime can execute: an op from a domain nobody implements."""
    graph = helper.make_graph(
        [helper.make_node("Frobnicate", ["input"], ["output"], name="frob", domain="com.example")],
        "custom",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3, 32, 32])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sweep")
    (folder / "custom_op.onnx").write_bytes(_custom_op_model())
    (folder / "garbage.onnx").write_bytes(b"\x08\x01garbage that is not a model")
    write_spec(folder, SPEC)
    return folder


@pytest.fixture(scope="module")
def first_run(ray_cluster: None, sweep_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> FirstRun:
    from farm.store import StoreLocation, open_store

    store = open_store(StoreLocation.resolve(tmp_path_factory.mktemp("data")))
    spec, base = load_spec(sweep_dir / "spec.yaml")
    events: list[tuple[str, str]] = []
    result = run_sweep(spec, base, "spec.yaml", store, listener=lambda stage, state, job, err: events.append((stage, state)))
    return store, spec, base, result, events


def test_sweep_records_every_job(first_run: FirstRun) -> None:
    store, _spec, _base, result, events = first_run
    with store.session() as s:
        builds = s.scalars(select(schema.Build)).all()
        ok = [b for b in builds if b.status == "ok"]
        # mobilenet and tiny: onnxruntime + torch each; custom_op: onnxruntime only (no torch module)
        assert len(ok) == 4
        assert {(b.backend, b.variant.model.name) for b in ok} == {
            ("onnxruntime", "mobilenet"), ("torch", "mobilenet"), ("onnxruntime", "tiny"), ("torch", "tiny")
        }
        assert s.scalar(select(func.count()).select_from(schema.Benchmark).where(schema.Benchmark.status == "ok")) == 8
        fidelity = s.scalars(select(schema.Fidelity).where(schema.Fidelity.status == "ok")).all()
        assert len(fidelity) == 4
        assert all(f.top1_agreement == 1.0 and f.cosine_min > 0.999 for f in fidelity)
        bench = s.scalars(select(schema.Benchmark).where(schema.Benchmark.status == "ok")).first()
        assert bench.iterations >= 3 and len(bench.raw_ms) == bench.iterations and bench.latency_p50 > 0
        # every backend's build and benchmark records its peak memory; ONNX Runtime's build log names its session options
        assert all(b.peak_host_memory_bytes is not None for b in ok)
        assert all(b.peak_host_memory_bytes is not None
                   for b in s.scalars(select(schema.Benchmark).where(schema.Benchmark.status == "ok")))
        assert all("providers: CPUExecutionProvider" in (b.log or "") and "graph_optimization_level: " in (b.log or "")
                   for b in ok if b.backend == "onnxruntime")
    assert len(events) == len(result.plan.jobs)


def test_artifact_files_match_their_sha256(first_run: FirstRun) -> None:
    store = first_run[0]
    with store.session() as s:
        artifacts = s.scalars(select(schema.Artifact)).all()
        assert {a.kind for a in artifacts} >= {"onnx", "checkpoint", "engine", "reference"}
        for artifact in artifacts:
            data = (store.artifacts.root / artifact.path).read_bytes()
            assert hashlib.sha256(data).hexdigest() == artifact.sha256
            assert len(data) == artifact.size_bytes
        for build in s.scalars(select(schema.Build).where(schema.Build.status == "ok")):
            assert build.manifest["engine_sha256"] == build.engine_sha256


def test_broken_inputs_fail_alone(first_run: FirstRun) -> None:
    store, _spec, _base, result, _events = first_run
    with store.session() as s:
        garbage = s.scalars(select(schema.Model).where(schema.Model.name == "garbage")).one()
        assert garbage.status == "failed"
        assert "model garbage: not a valid ONNX model" in garbage.error
        custom = s.scalars(select(schema.Build).where(schema.Build.label.contains("custom_op"))).one()
        assert custom.status == "failed"
        assert "Frobnicate" in custom.error
        assert "Traceback" in custom.log
        blocked = s.scalars(select(schema.SweepJob).where(schema.SweepJob.state == "blocked")).all()
        assert any("garbage" in j.label for j in blocked) and any("custom_op" in j.label for j in blocked)
        assert s.get(schema.Sweep, result.sweep_id).status == "finished"
    assert result.count("build", "done") == 4


def test_winners_of_the_sweep(first_run: FirstRun) -> None:
    store, spec, _base, result, _events = first_run
    with store.session() as s:
        found = candidates(s, sweep_id=result.sweep_id)
    rows = winners(found, "p50", spec.fidelity.min_top1_agreement)
    assert {(r.model, r.batch_size) for r in rows} == {("mobilenet", 1), ("mobilenet", 2), ("tiny", 1), ("tiny", 2)}
    for row in rows:
        group = [c for c in found if (c.model, c.target, c.batch_size) == (row.model, row.target, row.batch_size)]
        fastest = min(group, key=lambda c: c.p50)  # every build here passes the floor
        assert row.verdict is not None and row.verdict.outcome in ("winner", "tie")
        if row.verdict.outcome == "winner":
            assert row.build_key == fastest.build_key and row.runner_up is not None
        else:  # a tie is answered by its simplest engine, and the fastest is among the tied
            assert fastest.build_key in row.verdict.tied and row.build_key == row.verdict.tied[0]
        torch = next(c for c in group if c.backend == "torch")
        assert row.speedup_vs_torch == pytest.approx(torch.p50 / row.p50)
    # a floor nothing reaches leaves no winner (read as a bare threshold: under the evidence rule a build that
    # disagrees no more than fp32 under a 2-pixel shift is never called worse than fp32, whatever the floor),
    # except where the reference judges nothing: random-weight mobilenet_v3_small's logits (about 1e-9) are
    # below what fp16 resolves, so its answer is a speed result and says so
    impossible = winners(found, "p50", Constraints(1.01, rule="threshold"))
    assert impossible and all(w.reference_note and w.model == "mobilenet" for w in impossible)


def test_every_group_is_retimed_or_says_why_not(first_run: FirstRun) -> None:
    store, _spec, _base, result, _events = first_run
    assert result.count("retime", "done") == 4  # mobilenet and tiny at batch 1 and 2; the broken models have no group
    with store.session() as s:
        for row in s.scalars(select(schema.Retime)):
            if row.contenders:  # re-timed: every contender ran every round
                assert len(row.contenders) >= 2 and all(len(row.rounds[k]["median"]) == 8 for k in row.contenders)
            else:
                assert row.reason and ("clear" in row.reason or "constraints" in row.reason)


def test_the_report_holds_verdicts_failures_and_environment(first_run: FirstRun, tmp_path: Path) -> None:
    store, _spec, _base, result, _events = first_run
    data_dir = str(store.location.data_dir)
    runner = CliRunner()
    for fmt in ("json", "csv", "html"):
        done = runner.invoke(app, ["report", str(result.sweep_id), "--format", fmt, "--out", str(tmp_path / f"r.{fmt}"), "--data-dir", data_dir])
        assert done.exit_code == 0, done.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert {(w["model"], w["batch"]) for w in report["winners"]} == {("mobilenet", 1), ("mobilenet", 2), ("tiny", 1), ("tiny", 2)}
    assert all(w["verdict"].startswith(("winner", "tie")) and w["verdict note"] for w in report["winners"])
    assert any("Frobnicate" in (f["error"] or "") for f in report["failures"])
    assert report["environment"] and report["environment"][0]["description"]["cpu"]["model"]
    assert "random weights" in report["notes"][0]
    assert (tmp_path / "r.csv").read_text().splitlines()[1].startswith("model,target,batch,engine")
    # a tie names the builds it tied with (or its runner-up); every build of the sweep is listed, the broken ones too
    assert all(w["tied with"] or w["runner-up"] for w in report["winners"] if w["verdict"].startswith("tie"))
    assert {b["model"] for b in report["builds"]} >= {"mobilenet", "tiny"}
    page = (tmp_path / "r.html").read_text()
    assert "Winners and verdicts</h2>" in page and "Frobnicate" in page and "<svg class=\"latency\"" in page
    missing = runner.invoke(app, ["report", "99", "--data-dir", data_dir])
    assert missing.exit_code == 2 and missing.stderr.strip() == "error: no sweep 99"


def test_second_run_resumes_and_builds_nothing(first_run: FirstRun) -> None:
    store, spec, base, first, _events = first_run
    with store.session() as s:
        builds_before = {(b.key, b.created_at) for b in s.scalars(select(schema.Build))}
    second = run_sweep(spec, base, "spec.yaml", store)
    assert second.sweep_id != first.sweep_id
    assert second.count("build", "done") == 0
    assert second.count("build", "cached") == 4
    assert second.count("benchmark", "cached") == 8
    # failed jobs are tried again (they may have been transient) and fail again the same way
    assert second.count("build", "failed") == 1 and second.count("export", "failed") == 1
    with store.session() as s:
        after = {(b.key, b.created_at) for b in s.scalars(select(schema.Build)) if b.status == "ok"}
    assert after <= builds_before


def test_cli_sweep_prints_winners_and_status(first_run: FirstRun, sweep_dir: Path) -> None:
    store = first_run[0]
    runner = CliRunner()
    result = runner.invoke(app, ["sweep", str(sweep_dir / "spec.yaml"), "--data-dir", str(store.location.data_dir)])
    assert result.exit_code == 1, result.output  # the broken models fail again: some jobs failed, the sweep finished
    assert "Winners of sweep" in result.output and "mobilenet" in result.output
    assert "3 failed (some jobs failed)" in result.output  # garbage export, custom_op reference and build
    status = runner.invoke(app, ["status", "--data-dir", str(store.location.data_dir), "--json"])
    assert status.exit_code == 0
    assert json.loads(status.stdout)["status"] == "finished"
    stages = json.loads(status.stdout)["stages"]
    # the CLI's sweep found what the first one finished: cached, nothing redone (only failures are tried again)
    assert stages and not any(states["done"] or states["pending"] for states in stages.values()), stages
    assert all(states["cached"] for states in stages.values()), stages
    best = runner.invoke(app, ["best", "--model", "tiny", "--data-dir", str(store.location.data_dir), "--json"])
    assert best.exit_code == 0 and '"model": "tiny"' in best.stdout


def test_redo_from_benchmark_times_the_stored_engines_again(first_run: FirstRun, sweep_dir: Path) -> None:
    store = first_run[0]

    def created() -> dict[str, dict[str, object]]:
        with store.session() as s:
            return {table.__name__: {r.key: r.created_at for r in s.scalars(select(table)) if r.status == "ok"}
                    for table in (schema.Model, schema.Build, schema.Benchmark, schema.Fidelity)}

    before = created()
    result = CliRunner().invoke(app, ["sweep", str(sweep_dir / "spec.yaml"), "--data-dir", str(store.location.data_dir),
                                      "--redo-from", "benchmark"])
    assert result.exit_code == 1, result.output  # the broken models fail again
    after = created()
    assert after["Model"] == before["Model"] and after["Build"] == before["Build"]  # read back, not redone
    assert len(after["Benchmark"]) == 8
    for table in ("Benchmark", "Fidelity"):
        assert after[table] and after[table].keys() == before[table].keys()
        assert all(after[table][key] > before[table][key] for key in before[table]), table


def test_a_native_crash_costs_only_its_job(ray_cluster: None, tmp_path: Path) -> None:
    from farm.store import StoreLocation, open_store

    spec_path = write_spec(tmp_path, f"""
        name: crash
        models:
          - {{name: crashy, source: "tests.models:crashes_when_built", weights: null, input_shape: [3, 32, 32]}}
          - {{name: tiny, source: "tests.models:tiny_cnn", weights: null, input_shape: [3, 32, 32]}}
        backends: {{torch: {{}}}}
        benchmark: {{warmup_s: 0.0, duration_s: 0.05, min_iterations: 3, window_s: 0.05, max_duration_s: 0.3}}
        fidelity: {{data: {CALIBRATION_DATA}, samples: 2}}
        limits: {{retries: 1}}
    """)
    spec, base = load_spec(spec_path)
    store = open_store(StoreLocation.resolve(tmp_path / "data"))
    result = run_sweep(spec, base, str(spec_path), store)
    with store.session() as s:
        builds = {b.variant.model.name: b for b in s.scalars(select(schema.Build))}
    assert builds["crashy"].status == "failed"
    # the build's own process died (forked for it), twice: limits.retries is 1
    assert builds["crashy"].error == "the isolated process killed by SIGSEGV while building (2 tries)", builds["crashy"].error
    assert builds["tiny"].status == "ok"
    assert result.count("benchmark", "done") == 1 and result.count("benchmark", "blocked") == 1


def test_a_sweep_on_postgresql(ray_cluster: None, postgres_url: str, tmp_path: Path) -> None:
    """The fleet's store, as the README's cluster section runs it: rows in PostgreSQL (--db-url), artifacts
    in the data dir; then the sweep again (resume reads PostgreSQL), status and best through the CLI."""
    from farm.store import StoreLocation, open_store

    spec_path = write_spec(tmp_path, f"""
        name: fleet
        models:
          - {{name: tiny, source: "tests.models:tiny_cnn", weights: null, input_shape: [3, 32, 32]}}
        batch_sizes: [1]
        backends: {{onnxruntime: {{intra_op_threads: 1}}, torch: {{}}}}
        benchmark: {{warmup_s: 0.0, duration_s: 0.05, min_iterations: 3, window_s: 0.05, max_duration_s: 0.3}}
        fidelity: {{data: {CALIBRATION_DATA}, samples: 2}}
    """)
    data_dir = tmp_path / "shared" / "farm-data"
    where = ["--data-dir", str(data_dir), "--db-url", postgres_url]
    runner = CliRunner()
    swept = runner.invoke(app, ["sweep", str(spec_path), *where])
    assert swept.exit_code == 0, swept.output
    assert "Winners of sweep 1 (fleet)" in swept.output
    assert not (data_dir / "farm.db").exists()  # no SQLite beside the artifacts

    store = open_store(StoreLocation(data_dir, postgres_url))
    assert store.engine.dialect.name == "postgresql"
    with store.session() as s:
        builds = s.scalars(select(schema.Build)).all()
        assert {(b.backend, b.status) for b in builds} == {("onnxruntime", "ok"), ("torch", "ok")}
        # in UTC, as SQLite's, though the test server's TimeZone is New York's
        assert all(b.created_at.utcoffset() == timedelta(0) for b in builds)
        bench = s.scalars(select(schema.Benchmark)).first()
        assert bench is not None and bench.converged is not None and len(bench.raw_ms) == bench.iterations
        for artifact in s.scalars(select(schema.Artifact)):
            assert hashlib.sha256((data_dir / "artifacts" / artifact.path).read_bytes()).hexdigest() == artifact.sha256

    spec, base = load_spec(spec_path)
    again = run_sweep(spec, base, str(spec_path), store)
    # nothing left to do: a re-run of sweep 1, counted there rather than added as a sweep
    assert again.sweep_id == 1 and again.count("build", "cached") == 2 and again.count("build", "done") == 0
    store.close()

    status = runner.invoke(app, ["status", "--json", *where])
    assert status.exit_code == 0, status.output
    shown = json.loads(status.stdout)
    assert shown["sweep"] == 1 and shown["reruns"] == 1 and shown["stages"]["build"]["done"] == 2
    best = runner.invoke(app, ["best", "--model", "tiny", "--json", *where])
    assert best.exit_code == 0 and '"model": "tiny"' in best.stdout


def test_a_rerun_with_nothing_left_is_answered_from_the_store_without_ray(ray_cluster: None, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """On one machine, a sweep whose every job already finished needs no cluster: Ray is never asked. One that
    has work plans once: the plan made for this machine's own look, before Ray starts, is the one Ray runs."""
    from farm.run import cluster, driver
    from farm.store import StoreLocation, open_store

    spec_path = write_spec(tmp_path, f"""
        name: again
        models:
          - {{name: tiny, source: "tests.models:tiny_cnn", weights: null, input_shape: [3, 32, 32]}}
        backends: {{onnxruntime: {{}}}}
        benchmark: {{warmup_s: 0, duration_s: 0.1, min_iterations: 3, window_s: 0.05, max_duration_s: 0.3}}
        fidelity: {{data: {CALIBRATION_DATA}, samples: 4}}
    """)
    store = open_store(StoreLocation.resolve(tmp_path / "data"))
    spec, base = load_spec(spec_path)
    plans: list[Plan] = []

    def planned(*args: Any) -> Plan:
        plans.append(expand(*args))
        return plans[-1]

    monkeypatch.setattr(driver, "expand", planned)
    first = run_sweep(spec, base, str(spec_path), store)
    assert set(first.states.values()) == {"done"}
    assert len(plans) == 1 and first.plan is plans[0]

    def no_ray(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("Ray was asked")

    monkeypatch.setattr(cluster, "connect", no_ray)
    monkeypatch.setattr(cluster, "probe", no_ray)
    second = run_sweep(spec, base, str(spec_path), store)
    assert second.states == {key: "cached" for key in first.states}
    assert second.sweep_id == first.sweep_id  # a re-run of it: no sweep row of its own
    assert len(plans) == 2
    with store.session() as s:
        assert s.get(schema.Sweep, second.sweep_id).status == "finished"
