"""Shared fixtures: one real local Ray cluster per test session, real SQLite stores in tmp dirs."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CALIBRATION_DATA = REPO / "calibration_data"


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    import ray

    # Factories named in test specs (tests.models:...) must import inside Ray's worker processes.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture()
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    from farm.store import StoreLocation, open_store

    opened = open_store(StoreLocation.resolve(tmp_path / "farm-data"))
    yield opened
    opened.close()


def write_spec(folder: Path, body: str, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path
