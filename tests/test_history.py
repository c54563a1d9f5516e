"""The History page (issue 24, must-have 3): one engine's p50 and fidelity across sweeps, version changes marked,
significant regressions flagged; its logic (farm.results.timeline) on a real store written by the Recorder."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.results.history import sweeps_runs
from farm.results.timeline import latest_changes, timeline
from farm.store import open_store
from tests.history_store import NEW_VERSION, History, add_history
from tests.seed import CPU, Seeded, seed
from tests.test_dashboard import app_on, open_page

CPU_ORT = {"intra_op_threads": 8, "graph_optimization_level": "all"}


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Seeded, History]:
    seeded = seed(tmp_path_factory.mktemp("history") / "farm-data")
    key = next(k for label, k in seeded.builds.items() if "resnet50" in label and "onnxruntime" in label and "fp32" in label and CPU in label)
    return seeded, add_history(seeded.location, key)


def test_an_engine_s_points_flag_the_version_change_and_the_slowdown(seeded: tuple[Seeded, History]) -> None:
    store, history = seeded
    reader = open_store(store.location, readonly=True)
    with reader.session() as s:
        sweeps = sweeps_runs(s)
    reader.close()
    runs = {sweep.sweep_id: next(r for r in sweep.runs if r.build_key == history.build_key and r.batch_size == 1)
            for sweep in sweeps if sweep.sweep_id in history.sweeps}
    key = runs[history.sweeps[0]].match_key
    points = {p.sweep.sweep_id: p for p in timeline(sweeps, key)}
    same, upgrade, slower = (points[i] for i in history.sweeps)
    assert same.since is not None and same.since.change == "no change" and not same.regressed
    assert upgrade.since is not None and upgrade.since.change == "no change"
    assert f"->{NEW_VERSION}" in upgrade.versions_changed and "onnxruntime" in upgrade.versions_changed
    assert slower.slower and slower.regressed and slower.since is not None
    assert slower.since.speed is not None and slower.since.speed.ratio == pytest.approx(1.3, rel=0.05) and slower.since.speed.p_value < 0.05
    assert not slower.versions_changed  # what changed is the time, not the libraries
    newest = [p for p in latest_changes(sweeps) if p.run.match_key == key]
    assert len(newest) == 1 and newest[0].sweep.sweep_id == history.sweeps[2] and newest[0].regressed
    # the other engines were not timed again: no regression is invented for them
    assert all(not p.regressed for p in latest_changes(sweeps) if p.run.match_key != key)


def test_history_page_draws_the_engine_and_lists_the_regression(seeded: tuple[Seeded, History], monkeypatch: pytest.MonkeyPatch) -> None:
    store, history = seeded
    at = open_page(app_on(store, monkeypatch), "history")
    regressions = next(d.value for d in at.dataframe if "was" in d.value.columns)
    assert len(regressions) >= 1 and regressions["change"].str.contains("slower").all()
    assert regressions["sweep"].str.contains(f"#{history.sweeps[2]} history-slower").any()
    at.selectbox(key="history_model").set_value("resnet50").run()
    engine = next(k for k in at.selectbox(key="history_engine").options if "onnxruntime" in k and "fp32" in k and "batch 1 " in k
                  and "intra_op_threads=8" in k)
    at.selectbox(key="history_engine").set_value(engine).run()
    assert not at.exception, [e.value for e in at.exception]
    table = next(d.value for d in at.dataframe if "vs sweep before" in d.value.columns)
    shown = table.set_index("sweep")
    assert NEW_VERSION in shown.loc[f"#{history.sweeps[1]} history-upgrade", "versions changed"]
    assert shown.loc[f"#{history.sweeps[2]} history-slower", "vs sweep before"].endswith("slower")
    assert set(table["build"]) >= {history.build_key[:8]}
    assert len(at.get("plotly_chart")) >= 1
