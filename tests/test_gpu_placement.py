"""Placement on a GPU machine, read off a GPU sweep's store (run on the device machine, never in CI):

    FARM_GPU_SWEEP_DB=/tmp/farm-gpu/farm.db python3 -m pytest -m gpu tests/test_gpu_placement.py

Every GPU build, benchmark, fidelity and re-timing job held exactly one GPU, recorded by UUID; no two
timings (benchmarks and re-timings) on one GPU overlapped in time.
"""

from __future__ import annotations

import os

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from farm.store import schema
from workers.device import assigned_gpus

pytestmark = pytest.mark.gpu
DB = os.environ.get("FARM_GPU_SWEEP_DB")


@pytest.fixture(scope="module")
def session() -> Session:
    if not DB:
        pytest.fail("set FARM_GPU_SWEEP_DB to the farm.db of a sweep with a GPU target")
    return Session(create_engine(f"sqlite:///{DB}"))


def test_every_gpu_job_holds_one_gpu_by_uuid(session: Session) -> None:
    uuids = {g.uuid for g in assigned_gpus()}
    gpu_targets = {t.id for t in session.scalars(select(schema.Target).where(schema.Target.kind == "gpu"))}
    assert gpu_targets
    rows = [*session.scalars(select(schema.Build).where(schema.Build.target_id.in_(gpu_targets))),
            *session.scalars(select(schema.Benchmark).join(schema.Build).where(schema.Build.target_id.in_(gpu_targets)))]
    assert rows
    for row in rows:
        assert row.device is not None and len(row.device["gpus"]) == 1, row.key
        assert row.device["gpus"][0] in uuids


def test_no_two_timings_on_one_gpu_overlap(session: Session) -> None:
    """Each job records when it started and ended on its worker (wall clock)."""
    spans = []
    for table in (schema.Benchmark, schema.Retime):
        for row in session.scalars(select(table).where(table.status == "ok")):
            if row.device and row.device["gpus"]:
                spans.append((row.device["gpus"][0], row.device["started"], row.device["ended"]))
    assert spans
    spans.sort()
    for (gpu_a, _start_a, end_a), (gpu_b, start_b, _end_b) in zip(spans, spans[1:], strict=False):
        if gpu_a == gpu_b:
            assert start_b >= end_a
