"""Shared fixtures: one real local Ray cluster per test session, real stores in tmp dirs: SQLite files,
and PostgreSQL databases on one real server per session (tests/postgres.py)."""

from __future__ import annotations

import logging
import os
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from farm.run.cluster import WARM_WORKERS
from farm.store import Store, StoreLocation, open_store
from tests.postgres import PostgresServer, PostgresUnavailable, running_server

if TYPE_CHECKING:
    from tests.digits_model import DigitsData

BACKENDS = ("sqlite", "postgresql")

REPO = Path(__file__).resolve().parent.parent
CALIBRATION_DATA = REPO / "calibration_data"


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    import ray

    # Factories named in test specs (tests.models:...) must import inside Ray's worker processes.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _system_config=WARM_WORKERS)  # as farm starts it
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session, started on first use (tests/postgres.py)."""
    try:
        with running_server() as server:
            yield server
    except PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture()
def postgres_url(postgres: PostgresServer) -> Iterator[str]:
    """A new empty database on the session's server, dropped after the test."""
    url = postgres.new_database()
    yield url
    postgres.drop_database(url)


def location_on(backend: str, data_dir: Path, request: pytest.FixtureRequest) -> StoreLocation:
    """A new store's location: the SQLite file in data_dir, or a new PostgreSQL database with its artifacts in data_dir."""
    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    return StoreLocation.resolve(data_dir, url)


@pytest.fixture(params=BACKENDS)
def store(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Store]:
    opened = open_store(location_on(request.param, tmp_path / "farm-data", request))
    yield opened
    opened.close()


@pytest.fixture(scope="session")
def digits() -> DigitsData:
    """The digits CNN's data: real labelled inputs, trained on in the session (tests/digits_model.py)."""
    from tests.digits_model import digits_data

    return digits_data()


@pytest.fixture()
def quiet_ort(caplog: pytest.LogCaptureFixture) -> None:
    """quantize_static warns "consider pre-processing" once per call: keep it out of failure reports."""
    caplog.set_level(logging.ERROR)


def write_spec(folder: Path, body: str, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path
