"""The dashboard caches its answers (candidates, rejected variants, build-only engines) by the store's results
stamp instead of re-reading them every 3 s: at 10,000 builds a read takes seconds. Such a cache may never
serve an answer the store no longer gives: the stamp changes with every write an answer reads, and not
with reads, and a page drawn before a write shows the write at its next rerun."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dashboard.data import TTL_S
from farm.results.queries import results_stamp
from farm.results.select import candidates
from farm.store import Store, open_store
from farm.store.record import Recorder
from farm.store.verify import repair_store, verify_store
from tests.seed import H200, TRT_O3, Seeded, seed
from tests.test_dashboard import app_on, open_page
from tests.test_dashboard_corruption import engine_file, flip_one_byte


@pytest.fixture()
def seeded(tmp_path: Path) -> Seeded:
    return seed(tmp_path / "farm-data")


def stamp(store: Store) -> tuple[object, ...]:
    with store.session() as s:
        return results_stamp(s)


def test_the_stamp_changes_with_each_write_an_answer_reads_and_never_with_a_read(seeded: Seeded) -> None:
    store = open_store(seeded.location)
    first = stamp(store)
    with store.session() as s:
        assert candidates(s)
    assert stamp(store) == first, "reading changed the stamp"

    flip_one_byte(engine_file(seeded, seeded.key("resnet50", "fp16", "tensorrt", TRT_O3, H200)))
    assert stamp(store) == first, "an artifact's bytes are checked per engine (engine_check), not stamped"
    repaired = repair_store(store, verify_store(store))
    assert any("marked for redo" in line for line in repaired.done)
    after_repair = stamp(store)
    assert after_repair != first  # the build row it marked for redo

    Recorder(store).start_sweep("another", "another.yaml", {"name": "another"}, [("export", "e" * 32, "eeee")])
    assert stamp(store) != after_repair  # a sweep's jobs decide what `--sweep` answers


def test_a_winner_marked_for_redo_leaves_the_page_at_its_next_rerun(seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    winner = seeded.key("resnet50", "fp16", "tensorrt", TRT_O3, H200)
    at = open_page(app_on(seeded, monkeypatch), "winners")
    assert f"download-{winner}" in [b.key for b in at.get("download_button")]

    flip_one_byte(engine_file(seeded, winner))
    repair_store(open_store(seeded.location), verify_store(open_store(seeded.location)))
    time.sleep(TTL_S + 0.5)  # the stamp itself is read at most every TTL_S
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert f"download-{winner}" not in [b.key for b in at.get("download_button")], "a cached answer named a build the store redoes"
    assert not at.error, "no longer a candidate: nothing to warn of"
    # a stale answer would still list it as a winner, with no engine file left to offer
    assert "No engine file is stored for this build." not in [c.value for c in at.caption]
