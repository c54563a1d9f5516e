"""`farm verify` and `--repair` on real stores: a real sweep's engine corrupted on disk, files without rows
and rows without files, a repair refused under a live driver, and `ArtifactStore.put` mending bad bytes."""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path

import onnxruntime as ort
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from farm.cli import app
from farm.run.driver import run_sweep
from farm.run.spec import SweepSpec, load_spec
from farm.run.stages import stages_from
from farm.store import Store, StoreLocation, open_store, schema
from farm.store.record import JobRow, Recorder
from farm.store.verify import verify_store
from tests.conftest import CALIBRATION_DATA, write_spec

runner = CliRunner()
EXPORT_COLUMNS = {"name": "m", "source": "torchvision:resnet18", "weights": None, "input_shape": [3, 224, 224]}


def _verify(data_dir: Path, *options: str) -> tuple[int, list[str]]:
    result = runner.invoke(app, ["verify", "--data-dir", str(data_dir), *options])
    return result.exit_code, result.stdout.splitlines() + result.stderr.splitlines()


def _tiny_sweep(tmp_path: Path) -> tuple[SweepSpec, Path, Path, Path, Store]:
    """A real sweep of one small model on ONNX Runtime, finished: its spec, base folder, spec file, data dir and store."""
    spec_path = write_spec(tmp_path, f"""
        name: fsck
        models:
          - {{name: tiny, source: "tests.models:tiny_cnn", weights: null, input_shape: [3, 32, 32]}}
        backends: {{onnxruntime: {{intra_op_threads: 1}}}}
        benchmark: {{warmup_s: 0, duration_s: 0.05, min_iterations: 3, window_s: 0.05, max_duration_s: 0.3}}
        fidelity: {{data: {CALIBRATION_DATA}, samples: 2}}
        selection: {{retime: {{enabled: false}}}}
        limits: {{isolate_builds: false}}
    """)
    data = tmp_path / "data"
    store = open_store(StoreLocation.resolve(data))
    spec, base = load_spec(spec_path)
    first = run_sweep(spec, base, str(spec_path), store)
    assert set(first.states.values()) == {"done"}, first.errors
    return spec, base, spec_path, data, store


@pytest.mark.slow
def test_a_corrupt_engine_is_named_repaired_and_rebuilt_by_the_next_sweep(ray_cluster: None, tmp_path: Path) -> None:
    """Issue 22: one engine's bytes altered after a real sweep. `farm verify` names it and exits 1; `--repair`
    removes it and marks its build for redo; the next sweep rebuilds it, and `farm pull` delivers an engine
    that loads in ONNX Runtime. The benchmark and fidelity rows (fine results) are never touched."""
    spec, base, spec_path, data, store = _tiny_sweep(tmp_path)
    code, lines = _verify(data)
    assert code == 0 and len(lines) == 1 and lines[0].startswith("ok: ") and "integrity_check ok" in lines[0], lines

    with store.session() as s:
        build = s.scalars(select(schema.Build)).one()
        timed = {(b.key, b.created_at) for b in s.scalars(select(schema.Benchmark))}
        judged = {(f.key, f.created_at) for f in s.scalars(select(schema.Fidelity))}
    engine = store.artifacts.path(build.engine_sha256 or "")
    engine.write_bytes(engine.read_bytes()[:-16] + b"\0" * 16)  # what a bad disk does: same size, other bytes

    code, lines = _verify(data)
    assert code == 1
    assert lines == [f"corrupt: artifacts/{engine.parent.name}/{engine.name}: its bytes do not hash to its name (engine); "
                     f"used by build {build.key[:12]}"]
    pulled = runner.invoke(app, ["pull", "tiny", "--target", "cpu", "--out", str(tmp_path / "out"), "--data-dir", str(data)])
    assert pulled.exit_code != 0

    code, lines = _verify(data, "--repair")
    assert code == 0, lines
    assert f"repaired build {build.key[:12]}: marked for redo" in lines
    assert f"repaired corrupt: artifacts/{engine.parent.name}/{engine.name}: removed" in lines
    assert lines[-1].startswith("ok: ")
    assert not engine.exists()
    with store.session() as s:
        marked = s.get(schema.Build, build.key)
        assert marked is not None and marked.status == "failed" and marked.engine_sha256 is None
        assert "farm verify --repair" in (marked.error or "")
        assert s.get(schema.Artifact, build.engine_sha256) is None

    second = run_sweep(spec, base, str(spec_path), store)
    assert second.states[build.key] == "done"  # rebuilt
    assert {second.states[key] for key in second.states if key != build.key} == {"cached"}  # nothing else redone
    with store.session() as s:
        assert {(b.key, b.created_at) for b in s.scalars(select(schema.Benchmark))} == timed
        assert {(f.key, f.created_at) for f in s.scalars(select(schema.Fidelity))} == judged
    assert _verify(data)[0] == 0
    pulled = runner.invoke(app, ["pull", "tiny", "--target", "cpu", "--out", str(tmp_path / "out"), "--data-dir", str(data)])
    assert pulled.exit_code == 0, pulled.output
    delivered = next((tmp_path / "out").glob("engine.*"))
    session = ort.InferenceSession(str(delivered), providers=["CPUExecutionProvider"])  # the delivered engine really loads
    assert [i.shape[1:] for i in session.get_inputs()] == [[3, 32, 32]]

    # The issue's own path, without verify: `--redo-from build` builds the same bytes again, and the store
    # now replaces the corrupt file instead of keeping it.
    with store.session() as s:
        rebuilt = s.get(schema.Build, build.key)
        assert rebuilt is not None and rebuilt.engine_sha256 == build.engine_sha256  # ONNX Runtime builds are deterministic
    engine.write_bytes(engine.read_bytes()[:-16] + b"\0" * 16)
    run_sweep(spec, base, str(spec_path), store, redo=stages_from("build"))
    assert store.artifacts.verify(build.engine_sha256 or "") and _verify(data)[0] == 0
    store.close()


@pytest.mark.slow
def test_a_re_run_remakes_a_deleted_artifact_and_redoes_below_it_only_what_used_other_bytes(ray_cluster: None,
                                                                                           tmp_path: Path) -> None:
    """A store that a re-run mends, without `farm verify`: an engine file deleted by hand makes the next sweep build
    it again (its ok row named a file that is gone). ONNX Runtime builds the same bytes, so the benchmark and the
    fidelity that used them are read back. A build whose row named other bytes than it makes now has them timed
    and judged again."""
    spec, base, spec_path, data, store = _tiny_sweep(tmp_path)
    with store.session() as s:
        build = s.scalars(select(schema.Build)).one()
    below = _timed_and_judged(store)
    engine = store.artifacts.path(build.engine_sha256 or "")
    engine.unlink()

    again = run_sweep(spec, base, str(spec_path), store)
    assert again.states[build.key] == "done", again.errors
    assert {state for key, state in again.states.items() if key != build.key} == {"cached"}
    assert engine.is_file() and store.artifacts.verify(build.engine_sha256 or "")
    assert _timed_and_judged(store) == below
    assert _verify(data)[0] == 0

    # The row names bytes whose file is gone and that the build does not make: what used them is redone.
    other = hashlib.sha256(b"an engine built some other day").hexdigest()
    with store.session() as s, s.begin():
        s.add(schema.Artifact(sha256=other, kind="engine", size_bytes=1, path=store.artifacts.relative_path(other)))
        s.flush()
        s.get(schema.Build, build.key).engine_sha256 = other  # type: ignore[union-attr]
    third = run_sweep(spec, base, str(spec_path), store)
    redone = {key for key, state in third.states.items() if state == "done"}
    assert redone == {build.key} | {key for key, _at in below}, third.states
    with store.session() as s:
        assert s.get(schema.Build, build.key).engine_sha256 == build.engine_sha256  # type: ignore[union-attr]
    store.close()


def _timed_and_judged(store: Store) -> set[tuple[str, datetime]]:
    """(key, when written) of every benchmark and fidelity row."""
    with store.session() as s:
        return ({(row.key, row.created_at) for row in s.scalars(select(schema.Benchmark))}
                | {(row.key, row.created_at) for row in s.scalars(select(schema.Fidelity))})


def _two_exports(store: Store) -> tuple[Recorder, dict[str, str]]:
    """Two finished export jobs, each with its own ONNX artifact: {key: sha256}."""
    recorder = Recorder(store)
    keys = {"a" * 32: b"model a", "b" * 32: b"model b"}
    sweep_id = recorder.start_sweep("s", "s.yaml", {"name": "s"}, [("export", key, key[:1]) for key in keys])
    shas = {}
    for key, data in keys.items():
        blob = recorder.put_blobs({"onnx": data}, {})["onnx"]
        recorder.record(sweep_id, JobRow("export", key, True, EXPORT_COLUMNS | {"onnx_sha256": blob.sha256}), [blob])
        shas[key] = blob.sha256
    recorder.finish_sweep(sweep_id, "finished")
    return recorder, shas


def test_orphans_partials_and_missing_files_are_reported_and_repaired(store: Store) -> None:
    """SQLite and PostgreSQL: a row whose file is gone, a file no row names, a write that never finished;
    each is one problem. Repair removes the stray files and marks only the job that lost its file for redo."""
    recorder, shas = _two_exports(store)
    lost, kept = shas["a" * 32], shas["b" * 32]
    store.artifacts.path(lost).unlink()
    orphan = store.artifacts.root / "ff" / ("f" * 64)
    orphan.parent.mkdir()
    orphan.write_bytes(b"no row names me")
    partial = store.artifacts.root / "ff" / ".partial-x1"
    partial.write_bytes(b"half a fi")

    found = verify_store(store)
    assert [(p.kind, p.where) for p in found.problems] == [
        ("missing", f"artifacts/{lost[:2]}/{lost}"),
        ("partial", "artifacts/ff/.partial-x1"),
        ("orphan", f"artifacts/ff/{'f' * 64}"),
    ]
    assert "used by export aaaaaaaaaaaa" in found.problems[0].line
    assert found.integrity == ("ok" if store.engine.dialect.name == "sqlite" else "skipped on postgresql")

    from farm.store.verify import repair_store

    done = repair_store(store, found).done
    assert "export aaaaaaaaaaaa: marked for redo" in done
    assert not orphan.exists() and not partial.exists()
    assert recorder.finished("export", "a" * 32) is None  # the next sweep redoes it
    assert recorder.finished("export", "b" * 32) is not None and store.artifacts.verify(kept)  # untouched
    after = verify_store(store)
    assert after.ok, [p.line for p in after.problems]
    assert after.artifacts == 1


def test_the_cli_reports_each_problem_and_json(tmp_path: Path) -> None:
    store = open_store(StoreLocation.resolve(tmp_path / "data"))
    _recorder, shas = _two_exports(store)
    store.artifacts.path(shas["a" * 32]).unlink()
    (store.artifacts.root / "stray").write_bytes(b"x")
    code, lines = _verify(tmp_path / "data")
    assert code == 1
    assert [line.split(":")[0] for line in lines] == ["missing", "orphan"]
    assert lines[1] == "orphan: artifacts/stray: no artifact row names this file"
    result = runner.invoke(app, ["verify", "--json", "--data-dir", str(tmp_path / "data")])
    import json

    answer = json.loads(result.stdout)
    assert result.exit_code == 1 and answer["ok"] is False and answer["head"] == answer["revision"]
    assert [p["kind"] for p in answer["problems"]] == ["missing", "orphan"]
    store.close()


def test_repair_waits_for_a_live_sweep(tmp_path: Path) -> None:
    """A running driver may have written a file whose row is not there yet: repair refuses, in one line."""
    store = open_store(StoreLocation.resolve(tmp_path / "data"))
    recorder = Recorder(store)
    live = recorder.start_sweep("s", "s.yaml", {"name": "s"}, [("export", "c" * 32, "c")])
    stray = store.artifacts.root / "ab" / ("ab" * 32)
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"being written")
    code, lines = _verify(tmp_path / "data", "--repair")
    assert code == 2 and lines == [f"error: sweep {live} is running on this store: repair it once the sweep has ended "
                                   "(a file being written now has no row yet)"]
    assert stray.exists()
    recorder.finish_sweep(live, "interrupted")
    assert _verify(tmp_path / "data", "--repair")[0] == 0 and not stray.exists()
    store.close()


def test_put_replaces_an_existing_file_whose_bytes_went_bad(tmp_path: Path) -> None:
    """Issue 22: a redone build with the same hash found the corrupt file and kept it."""
    from farm.store import ArtifactStore

    artifacts = ArtifactStore(tmp_path / "artifacts")
    sha = artifacts.put(b"an engine")
    assert sha == hashlib.sha256(b"an engine").hexdigest()
    artifacts.path(sha).write_bytes(b"an engin3")
    assert not artifacts.verify(sha)
    assert artifacts.put(b"an engine") == sha
    assert artifacts.verify(sha) and artifacts.partials() == []
    before = artifacts.path(sha).stat().st_ino
    artifacts.put(b"an engine")  # intact: left alone, not rewritten
    assert artifacts.path(sha).stat().st_ino == before
