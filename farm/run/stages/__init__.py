"""The pipeline's stages, one module each, in the store's order (farm.store.schema.STAGES):

    export -> reference -> calibrate -> variant -> build -> benchmark, fidelity -> retime

A stage's module holds all of it on the run side: its job type (what farm.run.plan makes), its
call (one frozen dataclass of its worker function's arguments, built once per job, whose `run()`
calls its function in workers.stage_work), the Ray options its task runs with, and how the result
becomes a row and what it hands its children. One Ray task (farm.run.tasks) runs any call. The
driver walks this registry to submit and record jobs, resume reads it to turn a stored row back
into what children need, and nothing else dispatches on a job's type.

A new stage is: its module here, listed in `registry`; its function in workers.stage_work; its
table in farm.store.schema (STAGE_TABLES, in pipeline order) with a migration; and the jobs
farm.run.plan makes of it. tests/test_stage_registry.py holds the registry to the store's order.
"""

from __future__ import annotations

from typing import Any

from farm.run.stages.base import Context, Produced, Stage
from farm.run.stages.benchmark import BenchmarkJob, BenchmarkStage
from farm.run.stages.build import BuildJob, BuildStage
from farm.run.stages.calibrate import CalibrateJob, CalibrateStage
from farm.run.stages.export import ExportJob, ExportStage
from farm.run.stages.fidelity import FidelityJob, FidelityStage
from farm.run.stages.reference import ReferenceJob, ReferenceStage
from farm.run.stages.retime import RetimeJob, RetimeSettings, RetimeStage
from farm.run.stages.variant import VariantJob, VariantStage
from farm.store.schema import STAGES

__all__ = [
    "STAGES", "BenchmarkJob", "BuildJob", "CalibrateJob", "Context", "ExportJob", "FidelityJob", "Produced", "ReferenceJob",
    "RetimeJob", "RetimeSettings", "Stage", "VariantJob", "registry", "stages_from",
]


def registry() -> dict[str, Stage[Any]]:
    """A fresh registry per sweep (the build stage remembers which timing caches it handed out)."""
    stages: list[Stage[Any]] = [ExportStage(), ReferenceStage(), CalibrateStage(), VariantStage(), BuildStage(), BenchmarkStage(),
                                FidelityStage(), RetimeStage()]
    return {stage.name: stage for stage in stages}


def stages_from(first: str) -> frozenset[str]:
    """`first` and every stage after it in the pipeline: what redoing `first` may make stale."""
    if first not in STAGES:
        raise ValueError(f"stage {first!r}: expected one of {', '.join(STAGES)}")
    return frozenset(STAGES[STAGES.index(first):])
