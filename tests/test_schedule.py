"""The sweep's scheduling without Ray: dependencies, blocking, the in-flight cap, timeouts, placement."""

from __future__ import annotations

from farm.jobs import ExportJob, Job, ReferenceJob, TargetGroup
from farm.schedule import Placement, Schedule
from workers.structs import ModelRef, Target

MODEL = ModelRef("m", "torchvision:resnet18", None, (3, 224, 224))


def export(key: str) -> ExportJob:
    return ExportJob(key, key, MODEL)


def child(key: str, parent: str) -> ReferenceJob:
    return ReferenceJob(key, key, parent, MODEL, None)  # type: ignore[arg-type]  # the data is never read here


def keys(jobs: list[Job]) -> list[str]:
    return [job.key for job in jobs]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_job_starts_once_every_parent_is_done_or_cached() -> None:
    schedule = Schedule([export("a"), export("b"), child("a1", "a"), child("b1", "b")], max_inflight=8, timeout_s=60)
    schedule.finish("b", "cached")
    start, blocked = schedule.advance()
    assert keys(start) == ["a", "b1"] and not blocked  # b1's parent was cached by an earlier sweep
    assert schedule.running == 2
    start, _ = schedule.advance()
    assert start == []  # a1 waits for a
    schedule.finish("a", "done")
    start, _ = schedule.advance()
    assert keys(start) == ["a1"]
    schedule.finish("a1", "done")
    schedule.finish("b1", "done")
    assert schedule.finished and schedule.count("reference", "done") == 2


def test_a_failure_blocks_its_whole_subtree_and_nothing_else() -> None:
    jobs = [export("a"), export("b"), child("a1", "a"), child("a2", "a1"), child("b1", "b")]
    schedule = Schedule(jobs, max_inflight=8, timeout_s=60)
    schedule.advance()
    schedule.finish("a", "failed", "ValueError: boom")
    schedule.finish("b", "done")
    start, blocked = schedule.advance()
    assert keys(start) == ["b1"]
    assert [(e.job.key, e.state) for e in blocked] == [("a1", "blocked"), ("a2", "blocked")]  # one pass, in pipeline order
    assert schedule.errors == {"a": "ValueError: boom", "a1": "an upstream job failed", "a2": "an upstream job failed"}


def test_no_more_than_max_inflight_run_at_once() -> None:
    schedule = Schedule([export(str(i)) for i in range(5)], max_inflight=2, timeout_s=60)
    start, _ = schedule.advance()
    assert keys(start) == ["0", "1"]
    assert schedule.advance() == ([], [])
    schedule.finish("0", "done")
    start, _ = schedule.advance()
    assert keys(start) == ["2"] and schedule.running == 2


def test_overdue_is_measured_from_each_jobs_start() -> None:
    clock = Clock()
    schedule = Schedule([export("a"), export("b")], max_inflight=1, timeout_s=10, clock=clock)
    schedule.advance()  # a starts at 0
    clock.now = 8
    schedule.finish("a", "done")
    schedule.advance()  # b starts at 8
    clock.now = 15
    assert schedule.overdue() == []  # 7 s in: a queue wait never counts against a job
    clock.now = 18.5
    assert schedule.overdue() == ["b"]


def test_placement_spreads_a_targets_jobs_over_its_nodes() -> None:
    cpu = TargetGroup(Target("cpu", "x"), ("n1", "n2", "n3"))
    gpu = TargetGroup(Target("gpu", "H200", "9.0"), ("g1",))
    placement = Placement([cpu, gpu])
    assert [placement.next_node(cpu.target.id) for _ in range(6)] == ["n1", "n2", "n3", "n1", "n2", "n3"]
    assert {placement.next_node(gpu.target.id) for _ in range(3)} == {"g1"}
