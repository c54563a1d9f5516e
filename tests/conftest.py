"""Shared fixtures: one real local Ray cluster per test session, real SQLite stores in tmp dirs."""

from __future__ import annotations

import logging
import os
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from farm.store import Store, StoreLocation, open_store

if TYPE_CHECKING:
    from tests.digits_model import DigitsData

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
def store(tmp_path: Path) -> Iterator[Store]:
    opened = open_store(StoreLocation.resolve(tmp_path / "farm-data"))
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
