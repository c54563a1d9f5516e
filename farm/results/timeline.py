"""One engine across every sweep that timed it (farm.results.history.sweeps_runs reads them): its p50 and fidelity sweep after sweep, each point compared
with the one before it the way `farm diff` compares two sweeps (farm.results.diff.pair: a bootstrap on the raw
timings' medians, Wilson intervals on agreement, the library versions and model graph that changed).
The dashboard's History page draws it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from farm.results.diff import EngineRun, Pair, describe_versions, pair

MatchKey = tuple[str, ...]  # EngineRun.match_key


@dataclass(frozen=True)
class SweepRuns:
    """The engines one sweep timed, as it saw them."""

    sweep_id: int
    name: str
    started_at: datetime | None
    runs: tuple[EngineRun, ...]

    @property
    def title(self) -> str:
        return f"#{self.sweep_id} {self.name}"


@dataclass(frozen=True)
class Point:
    """One engine in one sweep, and what changed since the sweep before that timed it."""

    sweep: SweepRuns
    run: EngineRun
    since: Pair | None  # None for the first sweep that timed it

    @property
    def slower(self) -> bool:
        return self.since is not None and self.since.change == "slower"

    @property
    def regressed(self) -> bool:
        """Significantly slower than the point before, or fidelity dropped (Wilson intervals apart)."""
        return self.since is not None and (self.since.change == "slower" or self.since.fidelity.dropped)

    @property
    def versions_changed(self) -> str:
        """`onnxruntime 1.29.0->1.30.0` for every library whose version differs from the point before."""
        if self.since is None:
            return ""
        return describe_versions(self.since.versions)


def latest_runs(sweeps: Iterable[SweepRuns]) -> dict[MatchKey, EngineRun]:
    """Every engine any sweep timed, as its newest sweep saw it."""
    return {run.match_key: run for sweep in sweeps for run in sweep.runs}


def timeline(sweeps: Iterable[SweepRuns], key: MatchKey) -> list[Point]:
    """One engine's points in sweep order, each paired with the one before (one bootstrap per point)."""
    points: list[Point] = []
    for sweep in sweeps:
        for run in sweep.runs:
            if run.match_key == key:
                points.append(Point(sweep, run, pair(points[-1].run, run) if points else None))
    return points


def latest_changes(sweeps: Iterable[SweepRuns]) -> list[Point]:
    """Each engine timed by two sweeps or more: its newest point against the one before."""
    last: dict[MatchKey, tuple[SweepRuns, EngineRun]] = {}
    before: dict[MatchKey, EngineRun] = {}
    for sweep in sweeps:
        for run in sweep.runs:
            if run.match_key in last:
                before[run.match_key] = last[run.match_key][1]
            last[run.match_key] = (sweep, run)
    return [Point(sweep, run, pair(before[key], run)) for key, (sweep, run) in last.items() if key in before]
