"""Issue 22: corruption shown where it is met. On a real store with one engine file's bytes altered on disk,
the Engine page shows the artifact's state and the command that mends it, and where its download would have
failed (Engine page and Winners page) a lasting st.error says so instead of a button."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from farm.results.delivery import ExportError
from farm.store import open_store
from tests.seed import H200, L4, TRT_O3, Seeded, seed
from tests.test_dashboard import app_on, open_page

REPAIR = "farm verify --repair"


@pytest.fixture()
def seeded(tmp_path: Path) -> Seeded:
    return seed(tmp_path / "farm-data")


def engine_file(seeded: Seeded, key: str) -> Path:
    with sqlite3.connect(seeded.location.url.removeprefix("sqlite:///")) as db:
        (sha,) = db.execute("SELECT engine_sha256 FROM builds WHERE key = ?", (key,)).fetchone()
    return open_store(seeded.location, readonly=True).artifacts.path(sha)


def flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))


def engine_page(seeded: Seeded, key: str, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    at = app_on(seeded, monkeypatch)
    at.query_params["build"] = key
    return open_page(at, "engine")


def downloads(at: AppTest) -> list[str]:
    return [b.proto.label for b in at.get("download_button")]


def test_the_engine_page_shows_each_artifacts_state(seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = seeded.key("resnet50", "fp16", "tensorrt", TRT_O3, H200)
    good = seeded.key("resnet50", "fp16", "tensorrt", TRT_O3, L4)
    path = engine_file(seeded, bad)
    at = engine_page(seeded, bad, monkeypatch)
    assert {m.label: m.value for m in at.metric}["Artifact"] == "ok" and not at.error
    assert downloads(at) == ["Bundle (.zip)", "Engine file", "manifest.json"]

    flip_one_byte(path)  # same size: only the sha256 tells
    at.run()  # the same session: the hash cached before must not hide the change
    assert {m.label: m.value for m in at.metric}["Artifact"] == "corrupt"
    [error] = [e.value for e in at.error]
    assert f"engine artifact {path.name} is corrupt" in error and REPAIR in error
    assert downloads(at) == ["manifest.json"], "a download that can only fail is not offered"

    path.unlink()
    at.run()
    assert {m.label: m.value for m in at.metric}["Artifact"] == "missing"
    assert f"engine artifact {path.name} is missing" in at.error[0].value and REPAIR in at.error[0].value

    other = engine_page(seeded, good, monkeypatch)  # the other engines are fine, and say so
    assert {m.label: m.value for m in other.metric}["Artifact"] == "ok" and not other.error


def test_the_winners_download_of_a_corrupt_engine_is_a_lasting_error(seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    from dashboard import data

    bad = seeded.key("resnet50", "fp16", "tensorrt", TRT_O3, H200)
    path = engine_file(seeded, bad)
    flip_one_byte(path)
    at = open_page(app_on(seeded, monkeypatch), "winners")
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and f"engine artifact {path.name} is corrupt" in errors[0] and REPAIR in errors[0], errors
    assert f"download-{bad}" not in [b.key for b in at.get("download_button")]
    assert at.get("download_button"), "the other winners' downloads stay"
    # The callable behind a download (clicked before the file went bad) says the same, not a traceback.
    with pytest.raises(ExportError, match=rf"{path.name} is corrupt.*{REPAIR}"):
        data.bundle((str(seeded.location.data_dir), seeded.location.url), bad)()


def test_a_refused_stored_name_is_shown_on_the_engine_page(seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    key = seeded.key("resnet50", "fp16", "tensorrt", TRT_O3, H200)
    with sqlite3.connect(seeded.location.url.removeprefix("sqlite:///")) as db:
        db.execute("UPDATE models SET name = '../../x' WHERE name = 'resnet50'")
    at = engine_page(seeded, key, monkeypatch)
    assert {m.label: m.value for m in at.metric}["Artifact"] == "refused"
    assert "model name '../../x' of build" in at.error[0].value
    assert downloads(at) == ["manifest.json"]
