"""The dashboard's cached access to the store: one read-only Store per location, query results for a few seconds.

Every cached function takes the location as plain strings, so two stores (two tests, or a
changed FARM_DATA_DIR) never share a cache entry, and nothing unhashable reaches Streamlit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import streamlit as st
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import Session

from farm.results import progress, queries
from farm.results.delivery import ExportError, artifact_problem, check_stored, engine_bundle, engine_bytes
from farm.results.diff import EngineRun, describe_p, describe_ratio
from farm.results.metrics import METRICS
from farm.results.report import render_report
from farm.results.select import Candidate, Exclusion, Untimed, candidates, prices_for, rejected_variants
from farm.results.select import untimed as build_only
from farm.results.history import sweeps_runs
from farm.results.timeline import MatchKey, Point, SweepRuns, latest_changes, latest_runs, timeline
from farm.store import Store, StoreLocation, open_store
from farm.store.db import shown_url
from farm.store.verify import ArtifactState, artifact_state

TTL_S = 3  # a running sweep shows up within seconds, and a rerun storm costs one query per TTL
ANSWER_TTL_S = 60  # answers are keyed by the results stamp; this bounds only what a hand edit of the database hides
EMPTY = "No results yet: run `farm sweep sweeps/quickstart.yaml` (or your own spec) and they appear here as jobs finish."

T = TypeVar("T")
Where = tuple[str, str]  # (data_dir, database url)


def where() -> Where:
    """The store location from FARM_DATA_DIR / FARM_DB_URL (what `farm dashboard` sets), else ./farm-data."""
    location = StoreLocation.resolve()
    return str(location.data_dir), location.url


@st.cache_resource(show_spinner=False)
def _store(data_dir: str, url: str) -> Store:
    return open_store(StoreLocation(Path(data_dir), url), readonly=True)


def store(at: Where) -> Store:
    return _store(*at)


def _read(at: Where, query: Callable[[Session], T]) -> T:
    with store(at).session() as s:
        return query(s)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def counts(at: Where) -> dict[str, int] | None:
    """Row counts, or None where there is no database (or no schema) to read yet."""
    if at[1].startswith("sqlite:///") and not Path(at[1].removeprefix("sqlite:///")).exists():
        return None
    try:
        return _read(at, queries.counts)
    except (OperationalError, ProgrammingError):  # no tables: SQLite says OperationalError, PostgreSQL ProgrammingError
        return None


def require(at: Where, table: str = "builds") -> dict[str, int]:
    """Stop the page with the empty state unless `table` has rows."""
    found = counts(at)
    if not found or not found.get(table):
        st.info(EMPTY)
        st.caption(f"Reading {shown_url(at[1])}")
        st.stop()
    return found


@st.cache_data(ttl=TTL_S, show_spinner=False)
def sweeps(at: Where) -> pd.DataFrame:
    rows = [asdict(summary) for summary in _read(at, queries.sweeps)]
    return pd.DataFrame(rows, columns=[f.name for f in fields(queries.SweepSummary)])


@st.cache_data(ttl=TTL_S, show_spinner=False)
def stage_progress(at: Where, sweep_id: int) -> pd.DataFrame:
    """One row per stage with its count per state, the total and the share no longer pending."""
    counts = _read(at, lambda s: progress.stage_progress(s, sweep_id))
    frame = pd.DataFrame([{"stage": stage, **states} for stage, states in counts.items()], columns=["stage", *progress.STATES])
    frame["total"] = frame[list(progress.STATES)].sum(axis=1)
    frame["progress"] = (frame["total"] - frame["pending"]) / frame["total"].where(frame["total"] > 0, 1)
    return frame


@st.cache_data(ttl=TTL_S, show_spinner=False)
def waiting(at: Where, sweep_id: int) -> list[progress.WaitingJob]:
    """The sweep's pending jobs another driver over the store runs (its lease), as `farm status` lists them."""
    return _read(at, lambda s: progress.waiting(s, sweep_id))


@st.cache_data(ttl=TTL_S, show_spinner=False)
def failures(at: Where, sweep_id: int) -> list[progress.Failure]:
    return _read(at, lambda s: progress.failures(s, sweep_id))


@st.cache_data(ttl=TTL_S, show_spinner=False)
def filter_options(at: Where) -> queries.FilterOptions:
    return _read(at, queries.filter_options)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def results(at: Where, filters: queries.Filters, limit: int, offset: int) -> tuple[pd.DataFrame, int]:
    rows, total = _read(at, lambda s: queries.results(s, filters, limit, offset))
    frame = pd.DataFrame(rows, columns=queries.RESULT_COLUMNS)
    frame["options"] = frame["options"].map(lambda o: " ".join(f"{k}={v}" for k, v in (o or {}).items()))
    frame["engine_MB"] = pd.to_numeric(frame.pop("engine_bytes")) / 1e6  # a page of failed builds is all None
    return frame, total


def column(metric: str) -> Any:
    """A table column for a metric of farm.results.metrics: its header and its number format."""
    m = METRICS[metric]
    percent = m.fmt.endswith("%}")
    return st.column_config.NumberColumn(m.header, format="percent" if percent else m.fmt.replace("{:", "%").replace("}", ""))


@st.cache_data(ttl=TTL_S, show_spinner=False)
def build_detail(at: Where, key: str) -> queries.BuildDetail | None:
    return _read(at, lambda s: queries.build_detail(s, key))


@st.cache_data(ttl=TTL_S, show_spinner=False)
def builds_by_prefix(at: Where, prefix: str) -> list[tuple[str, str]]:
    """(key, label) of the builds a key or a short key (its first characters) may name."""
    return _read(at, lambda s: queries.builds_by_prefix(s, prefix))


@st.cache_data(ttl=TTL_S, show_spinner=False)
def build_choices(at: Where) -> dict[str, str]:
    return _read(at, queries.build_choices)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def timed_pair(at: Where) -> tuple[str, str] | None:
    return _read(at, queries.timed_pair)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def results_stamp(at: Where) -> tuple[Any, ...]:
    return _read(at, queries.results_stamp)


# Answers are cached by the store's results stamp, not by a TTL: at 10,000 builds reading the candidates takes
# seconds, and a slider's rerun should not pay it again unless something was written (benchmarks/dashboard_render.py).
# `stamp` is part of the key (Streamlit leaves out of it only arguments named with a leading underscore).
def found_candidates(at: Where, sweep_id: int | None) -> list[Candidate]:
    """Priced with the sweep's prices: (the newest sweep's that has them, for all sweeps) over farm's defaults."""
    return _found_candidates(at, sweep_id, results_stamp(at))


def rejected(at: Where, sweep_id: int | None) -> list[Exclusion]:
    """Variants judged not viable before any build (farm.results.select.rejected_variants)."""
    return _rejected(at, sweep_id, results_stamp(at))


def untimed(at: Where, sweep_id: int | None) -> list[Untimed]:
    return _untimed(at, sweep_id, results_stamp(at))


@st.cache_data(ttl=ANSWER_TTL_S, show_spinner=False, max_entries=16)
def _found_candidates(at: Where, sweep_id: int | None, stamp: tuple[Any, ...]) -> list[Candidate]:
    return _read(at, lambda s: candidates(s, sweep_id=sweep_id, prices=prices_for(s, sweep_id)))


@st.cache_data(ttl=ANSWER_TTL_S, show_spinner=False, max_entries=16)
def _rejected(at: Where, sweep_id: int | None, stamp: tuple[Any, ...]) -> list[Exclusion]:
    return _read(at, lambda s: rejected_variants(s, sweep_id=sweep_id))


@st.cache_data(ttl=ANSWER_TTL_S, show_spinner=False, max_entries=16)
def _untimed(at: Where, sweep_id: int | None, stamp: tuple[Any, ...]) -> list[Untimed]:
    return _read(at, lambda s: build_only(s, sweep_id=sweep_id))


def report(at: Where, sweep_id: int, format: str) -> Callable[[], bytes]:
    """The sweep's report, made when someone clicks (farm.results.report, the same file as `farm report`)."""
    return lambda: _read(at, lambda s: render_report(s, sweep_id, format)).encode()


@dataclass(frozen=True)
class EngineCheck:
    """Whether a build's engine can be downloaded: its artifact's state and, unless "ok", the line that says why not."""

    state: str  # ok | missing | corrupt | refused (a stored name that cannot be a path)
    problem: str | None = None


@st.cache_data(show_spinner=False, max_entries=512)
def _artifact_state(at: Where, sha256: str, size_bytes: int | None, stamp: tuple[int, int] | None) -> ArtifactState:
    return artifact_state(store(at).artifacts, sha256, size_bytes)


def engine_check(at: Where, build_key: str) -> EngineCheck | None:
    """The build's engine file checked as `farm verify` checks it (size, then sha256), this one only; None
    without an engine. The hash is cached by the file's size and mtime: a rerun costs a stat, and a file
    that changed is hashed again."""
    build = build_detail(at, build_key)
    if build is None or not build.engine_sha256:
        return None
    try:
        check_stored(build)
    except ExportError as exc:
        return EngineCheck("refused", str(exc))
    path = store(at).artifacts.path(build.engine_sha256)
    try:
        found = path.stat()
        stamp: tuple[int, int] | None = (found.st_size, found.st_mtime_ns)
    except OSError:
        stamp = None
    state = _artifact_state(at, build.engine_sha256, build.engine_bytes, stamp)
    return EngineCheck(state, None if state == "ok" else artifact_problem(build.engine_sha256, state))


def bundle(at: Where, build_key: str) -> Callable[[], bytes]:
    """The download callable: the ZIP is made only when someone clicks, and is not cached."""
    return lambda: engine_bundle(store(at), build_key)


def raw_engine(at: Where, build_key: str) -> Callable[[], bytes]:
    return lambda: engine_bytes(store(at), build_key)


# History: engines across sweeps (farm.results.timeline)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def _sweep_runs(at: Where) -> list[SweepRuns]:
    return _read(at, sweeps_runs)


def history_engines(at: Where) -> dict[MatchKey, EngineRun]:
    return latest_runs(_sweep_runs(at))


def history_count(at: Where, key: MatchKey) -> int:
    """How many sweeps timed this engine."""
    return sum(any(run.match_key == key for run in sweep.runs) for sweep in _sweep_runs(at))


@st.cache_data(ttl=TTL_S, show_spinner=False)
def history_points(at: Where, key: MatchKey) -> list[Point]:
    return timeline(_sweep_runs(at), key)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def history_changes(at: Where) -> list[Point]:
    return latest_changes(_sweep_runs(at))


def speed_text(p: Point) -> str:
    """`1.25x [1.21, 1.30], p = 0.001: slower` against the sweep before; `first` for the first point."""
    if p.since is None:
        return "first"
    return f"{describe_ratio(p.since.speed)} p={describe_p(p.since.speed)}: {p.since.change}" if p.since.speed is not None else "not timed"


def spread(p: Point) -> tuple[float, float]:
    """How far below and above the p50 the raw timings' 5th and 95th percentiles lie (an error bar)."""
    if not p.run.raw_ms or p.run.p50 is None:
        return 0.0, 0.0
    low, high = np.percentile(np.asarray(p.run.raw_ms, dtype=np.float64), [5, 95])
    return max(0.0, p.run.p50 - float(low)), max(0.0, float(high) - p.run.p50)
