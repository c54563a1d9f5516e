"""A history for one seeded engine, written through the real Recorder (so a redo keeps the row it replaces,
as in a real `--redo-from benchmark`): three more sweeps that time it again, the second with a new
onnxruntime version, the third with every raw timing 30% slower."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from farm.store import StoreLocation, open_store, schema
from farm.store.record import JobRow, Recorder, row_columns

NEW_VERSION = "9.9.9"
SLOWER = 1.3


@dataclass(frozen=True)
class History:
    build_key: str
    sweeps: tuple[int, int, int]  # same as before, new version, slower


def add_history(location: StoreLocation, build_key: str) -> History:
    store = open_store(location)
    recorder = Recorder(store)
    try:
        with store.session() as s:
            build = s.get(schema.Build, build_key)
            assert build is not None, build_key
            bench = s.scalars(select(schema.Benchmark).where(schema.Benchmark.build_key == build_key)
                              .order_by(schema.Benchmark.batch_size)).first()
            fidelity = s.scalars(select(schema.Fidelity).where(schema.Fidelity.build_key == build_key)).first()
            assert bench is not None and bench.raw_ms, build_key
            build_columns, bench_columns = row_columns(build), row_columns(bench)
            jobs = [("build", build.key, build.label), ("benchmark", bench.key, build.label)]
            jobs += [("fidelity", fidelity.key, build.label)] if fidelity is not None else []
        sweeps = []
        for name, version, scale in (("history-same", None, 1.0), ("history-upgrade", NEW_VERSION, 1.0), ("history-slower", None, SLOWER)):
            sweep_id = recorder.start_sweep(name, "history.yaml", {"name": name}, jobs, state="cached")
            if version is not None:  # the engine rebuilt with another onnxruntime: the build row is written again
                build_columns["backend_version"] = version
                recorder.record(sweep_id, JobRow("build", build_key, True, _own(build_columns)))
            raw = [x * scale for x in bench_columns["raw_ms"]]
            bench_columns = bench_columns | {"raw_ms": raw, "latency_p50": sorted(raw)[len(raw) // 2]}
            recorder.record(sweep_id, JobRow("benchmark", bench_columns["key"], True, _own(bench_columns)))
            recorder.finish_sweep(sweep_id, "finished")
            sweeps.append(sweep_id)
        return History(build_key, (sweeps[0], sweeps[1], sweeps[2]))
    finally:
        store.close()


def _own(columns: dict) -> dict:
    """A stage row's own columns (what JobRow.columns holds): without those every stage row shares."""
    return {k: v for k, v in columns.items() if k not in ("key", "status", "error", "log", "seconds", "node", "device", "created_at")}
