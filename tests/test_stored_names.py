"""Issue 22: a name read from the store is checked where a path is made of it, and a failed delivery leaves
no folder behind. Real SQLite stores (tests/seed.py) whose rows are edited by hand, as an older farm or a
person could have left them, and real engine files whose bytes are altered on disk."""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
import zipfile
from pathlib import Path, PurePosixPath

import pytest
from typer.testing import CliRunner

from farm.cli import app
from farm.results.delivery import ExportError
from farm.results.labels import short_key
from farm.store import open_store
from tests.seed import H200, TRT_O3, Seeded, seed

runner = CliRunner()


@pytest.fixture()
def seeded(tmp_path: Path) -> Seeded:
    return seed(tmp_path / "farm-data")


def database(seeded: Seeded) -> Path:
    return Path(seeded.location.url.removeprefix("sqlite:///"))


def rename_model(seeded: Seeded, old: str, new: str) -> None:
    """What a store written before farm.run.spec checked names, or edited by hand, holds."""
    with sqlite3.connect(database(seeded)) as db:
        assert db.execute("UPDATE models SET name = ? WHERE name = ?", (new, old)).rowcount >= 1


def tree(root: Path) -> set[str]:
    """Every path under root, folders included, so that an empty folder left behind counts too."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def engine_of(seeded: Seeded, key: str) -> Path:
    with sqlite3.connect(database(seeded)) as db:
        (sha,) = db.execute("SELECT engine_sha256 FROM builds WHERE key = ?", (key,)).fetchone()
    return open_store(seeded.location, readonly=True).artifacts.path(sha)


def corrupt(path: Path) -> None:
    """One byte of the engine altered in place: the size stays, only the sha256 tells."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def escapes(tmp_path: Path) -> list[str]:
    """The stored names the tests write: one climbing out of the working folder, one absolute (this process's
    own, so that what a failing run writes there is told apart)."""
    return ["../../x", f"/tmp/ABS-{os.getpid()}"]


@pytest.mark.parametrize("which", [0, 1], ids=["dotdot", "absolute"])
def test_pull_refuses_a_stored_model_name_that_leaves_its_folder(seeded: Seeded, tmp_path: Path, which: int,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    name = escapes(tmp_path)[which]
    key = seeded.key("resnet50", "fp16", "tensorrt", TRT_O3, H200)
    rename_model(seeded, "resnet50", name)
    here = tmp_path / "work" / "a" / "b"
    here.mkdir(parents=True)
    monkeypatch.chdir(here)
    before = tree(tmp_path)
    for args in (["pull", name, "--target", "H200"], ["pull", key[:12]]):  # by model and target, and by build key
        result = runner.invoke(app, [*args, "--data-dir", str(seeded.location.data_dir)])
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert lines == [f"error: model name {name!r} of build {short_key(key)} cannot be a file or folder name: refused"], lines
        assert tree(tmp_path) == before, "pull wrote something"
    assert not list(Path("/tmp").glob(f"ABS-{os.getpid()}*"))


def test_pull_with_out_of_a_plain_name_still_works(seeded: Seeded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default folder is checked by its name, not refused because it was checked: a plain name pulls."""
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["pull", "resnet50", "--target", "H200", "--data-dir", str(seeded.location.data_dir)])
    assert result.exit_code == 0, result.output
    [folder] = [p for p in tmp_path.iterdir() if p.name != "farm-data"]
    assert folder.name.startswith("resnet50-tensorrt-fp16-nvidia-h200") and (folder / "engine.plan").is_file()


@pytest.mark.parametrize("which", [0, 1], ids=["dotdot", "absolute"])
def test_the_dashboards_zip_holds_no_entry_outside_its_folder(seeded: Seeded, tmp_path: Path, which: int) -> None:
    """The ZIP is made by the function the dashboard's download calls (dashboard.data.bundle)."""
    from dashboard import data

    name = escapes(tmp_path)[which]
    key = seeded.key("resnet50", "fp16", "tensorrt", TRT_O3, H200)
    rename_model(seeded, "resnet50", name)
    at = (str(seeded.location.data_dir), seeded.location.url)
    with pytest.raises(ExportError) as refused:
        data.bundle(at, key)()
    assert str(refused.value) == f"model name {name!r} of build {short_key(key)} cannot be a file or folder name: refused"
    # every other build's ZIP: entries of one plain folder, each a relative path without '..'
    for other in (k for k in seeded.builds.values() if k != key and k != seeded.failed_build):
        try:
            archive = zipfile.ZipFile(io.BytesIO(data.bundle(at, other)()))
        except ExportError as exc:
            assert f"of build {short_key(other)}" in str(exc) and "refused" in str(exc)  # another resnet50 build: refused the same way
            continue
        for entry in archive.namelist():
            parts = PurePosixPath(entry).parts
            assert not PurePosixPath(entry).is_absolute() and ".." not in parts and len(parts) == 2, entry


def test_deliver_triton_skips_the_model_and_writes_nothing_outside(seeded: Seeded, tmp_path: Path) -> None:
    name = "../../x"
    rename_model(seeded, "resnet50", name)
    out = tmp_path / "deep" / "er" / "repo"
    result = runner.invoke(app, ["deliver", "triton", "--out", str(out), "--data-dir", str(seeded.location.data_dir)])
    assert result.exit_code == 0, result.output
    refused = [line for line in result.stderr.splitlines() if "refused" in line]
    assert len(refused) == 1 and f"model name {name!r} of build " in refused[0], result.stderr
    assert os.listdir(tmp_path / "deep") == ["er"] and os.listdir(tmp_path / "deep" / "er") == ["repo"]  # where ../../x would land
    assert {p.name for p in out.iterdir()} == {"efficientnet_b0", "efficientnet_b0_onnxruntime", "mobilenet_v3_large",
                                               "mobilenet_v3_large_onnxruntime"}
    assert not (tmp_path / "x").exists() and not (tmp_path / "deep" / "x").exists()


def test_deliver_triton_with_every_model_refused_leaves_no_folder(seeded: Seeded, tmp_path: Path) -> None:
    for i, model in enumerate(("resnet50", "mobilenet_v3_large", "efficientnet_b0")):
        rename_model(seeded, model, f"../{i}")
    out = tmp_path / "new" / "repo"
    result = runner.invoke(app, ["deliver", "triton", "--out", str(out), "--data-dir", str(seeded.location.data_dir)])
    assert result.exit_code == 3, result.output
    assert len([line for line in result.stderr.splitlines() if "cannot be a file or folder name: refused" in line]) == 3
    assert not (tmp_path / "new").exists()


def test_a_stored_compute_capability_cannot_name_a_file_outside_1(seeded: Seeded, tmp_path: Path) -> None:
    """The Triton file name model_sm<cc>.plan is made of targets.compute_capability, a stored name too."""
    with sqlite3.connect(database(seeded)) as db:
        db.execute("UPDATE targets SET compute_capability = ? WHERE id = ?", ("9/../../../../x", H200))
    out = tmp_path / "repo"
    result = runner.invoke(app, ["deliver", "triton", "--out", str(out), "--data-dir", str(seeded.location.data_dir)])
    assert result.exit_code == 0, result.output
    assert f"compute capability 'model_sm9/////x.plan' of target {H200} cannot be a file or folder name" in result.stderr
    assert sorted(p.name for p in (out / "resnet50" / "1").iterdir()) == ["model_sm89.plan"]  # the L4's engine only
    assert not (tmp_path / "x.plan").exists()


def test_a_stored_sha256_that_is_not_one_is_refused_before_a_file_is_read(seeded: Seeded, tmp_path: Path) -> None:
    key = seeded.key("resnet50", "fp16", "tensorrt", TRT_O3, H200)
    with sqlite3.connect(database(seeded)) as db:
        db.execute("PRAGMA foreign_keys = OFF")
        db.execute("UPDATE builds SET engine_sha256 = ? WHERE key = ?", ("../../../../../etc/passwd", key))
    result = runner.invoke(app, ["pull", key[:12], "--out", str(tmp_path / "x"), "--data-dir", str(seeded.location.data_dir)])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"error: engine sha256 '../../../../../etc/passwd' of build {short_key(key)} is not a sha256: refused"]
    assert not (tmp_path / "x").exists()


# B: a failed delivery leaves no folder behind

def test_deliver_triton_of_a_corrupt_engine_leaves_no_folder(seeded: Seeded, tmp_path: Path) -> None:
    key = seeded.key("resnet50", "fp16", "tensorrt", TRT_O3, H200)
    corrupt(engine_of(seeded, key))
    out = tmp_path / "new" / "repo"
    result = runner.invoke(app, ["deliver", "triton", "--out", str(out), "--data-dir", str(seeded.location.data_dir)])
    assert result.exit_code == 1, result.output
    [line] = [x for x in result.stderr.strip().splitlines() if x.startswith("error:")]
    assert "is corrupt" in line and "farm verify --repair" in line
    assert not (tmp_path / "new").exists(), tree(tmp_path / "new")


def test_deliver_triton_into_an_existing_repository_keeps_the_last_good_model_whole(seeded: Seeded, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    first = runner.invoke(app, ["deliver", "triton", "--out", str(out), "--data-dir", str(seeded.location.data_dir)])
    assert first.exit_code == 0, first.output
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*") if p.is_file()}
    corrupt(engine_of(seeded, seeded.key("resnet50", "fp16", "tensorrt", TRT_O3, H200)))
    again = runner.invoke(app, ["deliver", "triton", "--out", str(out), "--data-dir", str(seeded.location.data_dir)])
    assert again.exit_code == 1
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*") if p.is_file()}
    assert after == before, "resnet50/ must stay as the last delivery wrote it, and no temporary folder may stay"
    assert not [p for p in out.rglob("*") if p.is_dir() and not any(p.iterdir())], "an empty folder was left"


def test_pull_of_a_corrupt_engine_leaves_no_folder(seeded: Seeded, tmp_path: Path) -> None:
    key = seeded.key("resnet50", "fp16", "tensorrt", TRT_O3, H200)
    corrupt(engine_of(seeded, key))
    result = runner.invoke(app, ["pull", key[:12], "--out", str(tmp_path / "a" / "b"), "--data-dir", str(seeded.location.data_dir)])
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert "is corrupt" in line and "farm verify --repair" in line
    assert not (tmp_path / "a").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    assert runner.invoke(app, ["pull", key[:12], "--out", str(kept), "--data-dir", str(seeded.location.data_dir)]).exit_code == 1
    assert os.listdir(kept) == ["notes.txt"], "a folder that was there stays, with only what was in it"
