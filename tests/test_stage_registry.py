"""One stage, one place: the registry follows the store's stage tables, and the one Ray task hands a
call the values of the object refs it holds."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import FrozenInstanceError, dataclass
from typing import Any

import numpy as np
import pytest
import ray
import sqlalchemy

from farm.run import tasks
from farm.run.stages import STAGES, registry, stages_from
from farm.run.stages.export import ExportCall
from farm.store import schema
from tests.conftest import REPO
from workers.structs import ModelRef


def test_the_registry_runs_in_the_order_of_the_store_s_stage_tables() -> None:
    stages = registry()
    assert tuple(stages) == tuple(schema.STAGE_TABLES) == STAGES
    assert STAGES is schema.STAGES  # defined once, by the store
    for name, stage in stages.items():
        assert stage.job_type.stage == name


def test_each_stage_s_artifacts_are_columns_of_its_table() -> None:
    for name, stage in registry().items():
        table = sqlalchemy.inspect(schema.STAGE_TABLES[name]).local_table
        missing = [column for column, _kind in stage.artifacts.values() if column not in table.columns]
        assert not missing, f"{name}: {missing} are not columns of {table.name}"


def test_redoing_a_stage_redoes_the_stages_after_it() -> None:
    assert stages_from("benchmark") == {"benchmark", "fidelity", "retime"}
    with pytest.raises(ValueError, match="expected one of export, reference"):
        stages_from("nope")


def test_a_call_is_built_once_and_keyword_only() -> None:
    call = ExportCall(model=ModelRef("m", "tests.models:tiny_cnn", None, (3, 32, 32)))
    with pytest.raises(FrozenInstanceError):
        setattr(call, "model", call.model)  # noqa: B010
    build: Any = ExportCall  # called as a copied positional list would call it
    with pytest.raises(TypeError):
        build(call.model)


@dataclass(frozen=True, kw_only=True)
class Received(tasks.Call):
    """Says what its task received in place of each field."""

    blob: bytes
    rows: np.ndarray
    engines: tuple[bytes, ...]
    plain: str

    def run(self) -> dict[str, Any]:
        return {"blob": self.blob, "rows": self.rows.tolist(), "engines": list(self.engines), "plain": self.plain}


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize("isolate", [False, True])
def test_the_task_gets_the_values_of_the_refs_a_call_holds(isolate: bool) -> None:
    put: Any = ray.put  # a call holds the refs where its worker wants their values (farm.run.stages.base.Context)
    call = Received(blob=put(b"onnx"), rows=put(np.arange(3)), engines=(put(b"a"), put(b"b")), plain="as is")
    outcome = ray.get(tasks.submit(call, {"max_retries": 0}, isolate=isolate))
    assert outcome.ok, outcome.error
    assert outcome.value == {"blob": b"onnx", "rows": [0, 1, 2], "engines": [b"a", b"b"], "plain": "as is"}


@dataclass(frozen=True, kw_only=True)
class Family(tasks.Call):
    """Says how many forkservers its process has started."""

    def run(self) -> int:
        import psutil

        return sum("multiprocessing.forkserver" in " ".join(child.cmdline()) for child in psutil.Process().children())


@pytest.mark.parametrize("warm", [True, False])
def test_a_sweep_that_isolates_builds_warms_each_worker_s_forkserver_before_its_first_build(warm: bool) -> None:
    """The forkserver's imports (2 s) run beside a worker's earlier jobs, not in front of its first isolated build.
    The task's own function, in a fresh process as a new Ray worker is (Ray reuses its workers, so a task of the
    shared test cluster may find one an earlier test started)."""
    script = ("from farm.run import tasks; from tests.test_stage_registry import Family; "
              f"outcome = tasks.call_task._function(Family(), warm={warm}); print(outcome.value if outcome.ok else outcome.error)")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == ("1" if warm else "0"), result.stdout + result.stderr
