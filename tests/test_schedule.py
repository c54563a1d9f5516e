"""The sweep's scheduling without Ray: dependencies, blocking, the in-flight cap, timeouts, placement."""

from __future__ import annotations

from farm.run.jobs import Job, TargetGroup
from farm.run.schedule import Placement, Schedule
from farm.run.stages import BenchmarkJob, BuildJob, ExportJob, ReferenceJob
from workers.bench import BenchSettings
from workers.structs import BuildRequest, ModelRef, Target

MODEL = ModelRef("m", "torchvision:resnet18", None, (3, 224, 224))


def export(key: str) -> ExportJob:
    return ExportJob(key, key, MODEL)


def child(key: str, parent: str) -> ReferenceJob:
    return ReferenceJob(key, key, parent, MODEL, None)  # type: ignore[arg-type]  # the data is never read here


def keys(started: list[tuple[Job, str | None]]) -> list[str]:
    return [job.key for job, _node in started]


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


def test_a_rejection_skips_its_subtree_which_is_no_failure() -> None:
    jobs = [export("a"), child("a1", "a"), child("a2", "a1")]
    schedule = Schedule(jobs, max_inflight=8, timeout_s=60)
    schedule.advance()
    schedule.finish("a", "rejected", "int8 is not viable")
    _, ended = schedule.advance()
    assert [(e.job.key, e.state) for e in ended] == [("a1", "skipped"), ("a2", "skipped")] and schedule.finished
    assert schedule.errors["a2"] == "nothing to do: its export was rejected (int8 is not viable)"
    from farm.cli.commands import sweep_exit_code

    assert sweep_exit_code({"x": "done", **schedule.states}) == 0  # judged, not failed
    assert sweep_exit_code({"x": "done", "y": "blocked"}) == 1


def test_the_last_failure_is_not_finished_until_its_blocked_jobs_are_reported() -> None:
    schedule = Schedule([export("a"), child("a1", "a")], max_inflight=8, timeout_s=60)
    schedule.advance()
    schedule.finish("a", "failed", "boom")
    assert not schedule.finished  # a1 is blocked, and the driver has not been told yet
    _, ended = schedule.advance()
    assert [(e.job.key, e.state) for e in ended] == [("a1", "blocked")] and schedule.finished


def test_a_turn_costs_what_it_starts_not_the_size_of_the_plan() -> None:
    # 5,000 ready builds on one busy node: each turn looks at the queue's head, not at every job
    placement = Placement([TargetGroup(CPU, ("n1",))], {"n1": ("h1", 1)})
    schedule = Schedule([build(f"b{i}", CPU) for i in range(5000)], max_inflight=99, timeout_s=60, placement=placement)
    looked = 0
    choose = placement.choose

    def counting(job: Job, waited_s: float = 0.0) -> str | None:
        nonlocal looked
        looked += 1
        return choose(job, waited_s)

    placement.choose = counting  # type: ignore[method-assign]
    for i in range(50):
        started, _ = schedule.advance()
        assert keys(started) == [f"b{i}"]
        assert schedule.advance() == ([], [])  # busy: one look, not 5,000
        schedule.finish(f"b{i}", "done")
    assert looked == 3 * 50  # per job: the look that started it, then one per turn at the next job while the node was busy


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


def bench(key: str, target: Target, parent: str = "") -> BenchmarkJob:
    return BenchmarkJob(key, key, parent, target, 1, BenchSettings())


def build(key: str, target: Target) -> BuildJob:
    request = BuildRequest(MODEL, "fp32", "onnxruntime", {}, target, (1,))
    return BuildJob(key, key, "", "", request, "1")


CPU = Target("cpu", "x")
GPU = Target("gpu", "H200", "9.0")


def test_placement_spreads_a_targets_jobs_over_its_nodes() -> None:
    groups = [TargetGroup(CPU, ("n1", "n2", "n3")), TargetGroup(GPU, ("g1",))]
    placement = Placement(groups, {"n1": ("h1", 2), "n2": ("h2", 2), "n3": ("h3", 2), "g1": ("h4", 2)})
    schedule = Schedule([build(f"b{i}", CPU) for i in range(6)] + [build("gb", GPU)], max_inflight=99, timeout_s=60, placement=placement)
    started, _ = schedule.advance()
    nodes = {job.key: node for job, node in started}
    assert sorted(nodes[f"b{i}"] for i in range(6)) == ["n1", "n1", "n2", "n2", "n3", "n3"]  # two each: their CPUs
    assert nodes["gb"] == "g1"


def test_a_timing_holds_its_host_and_is_not_starved() -> None:
    # two Ray nodes on one host (one per container, say) and a second host
    groups = [TargetGroup(CPU, ("a1", "a2", "b1"))]
    placement = Placement(groups, {"a1": ("host-a", 1), "a2": ("host-a", 1), "b1": ("host-b", 1)})
    jobs = [build("build-1", CPU), build("build-2", CPU), bench("timing-1", CPU), bench("timing-2", CPU), build("build-3", CPU)]
    schedule = Schedule(jobs, max_inflight=99, timeout_s=60, placement=placement)
    started, _ = schedule.advance()
    # builds go to the idlest hosts; the timings wait for an idle host and hold the hosts they wait for
    assert [(job.key, node) for job, node in started] == [("build-1", "a1"), ("build-2", "b1")]
    schedule.finish("build-2", "done")
    started, _ = schedule.advance()
    assert [(job.key, node) for job, node in started] == [("timing-1", "b1")]  # host-b is idle: the timing takes it
    assert schedule.advance() == ([], [])  # host-a runs build-1, host-b times: nothing else starts anywhere
    schedule.finish("build-1", "done")
    started, _ = schedule.advance()
    assert [job.key for job, _ in started] == ["timing-2"] and placement.host_of(placement.assigned["timing-2"]) == "host-a"
    schedule.finish("timing-1", "done")
    started, _ = schedule.advance()
    assert [(job.key, node) for job, node in started] == [("build-3", "b1")]  # never beside timing-2 on host-a


def test_a_ready_timing_lets_its_host_finish_other_work_until_its_patience_runs_out() -> None:
    clock = Clock()
    placement = Placement([TargetGroup(CPU, ("n1",))], {"n1": ("h1", 2)}, patience_s=10)
    jobs = [build("b1", CPU), bench("t1", CPU, "b1"), build("b2", CPU), build("b3", CPU), build("b4", CPU), build("b5", CPU)]
    schedule = Schedule(jobs, max_inflight=99, timeout_s=600, placement=placement, clock=clock)
    assert [job.key for job, _ in schedule.advance()[0]] == ["b1", "b2"]
    schedule.finish("b1", "done")  # t1 is ready; the host still runs b2
    clock.now = 1
    assert [job.key for job, _ in schedule.advance()[0]] == ["b3"]  # within its patience: the host keeps working
    schedule.finish("b3", "done")
    clock.now = 12  # t1 has waited 11 s: its host takes nothing new
    assert schedule.advance() == ([], [])
    schedule.finish("b2", "done")
    assert [job.key for job, _ in schedule.advance()[0]] == ["t1"]
    schedule.finish("t1", "done")
    assert [job.key for job, _ in schedule.advance()[0]] == ["b4", "b5"]


def test_a_target_without_live_nodes_fails_its_jobs_at_once() -> None:
    placement = Placement([TargetGroup(CPU, ("n1",)), TargetGroup(GPU, ("g1",))], {"n1": ("h1", 1), "g1": ("h2", 1)})
    schedule = Schedule([build("cpu-build", CPU), build("gpu-build", GPU)], max_inflight=9, timeout_s=60, placement=placement)
    placement.node_died("g1")
    started, ended = schedule.advance()
    assert [job.key for job, _ in started] == ["cpu-build"]
    assert [(e.job.key, e.state, e.error) for e in ended] == [("gpu-build", "failed", "no live node of target H200 / sm_90")]
    # a node that joins takes the pending work of its target
    schedule2 = Schedule([build("later", GPU)], max_inflight=9, timeout_s=60, placement=placement)
    assert placement.add_node("g2", "h3", 4, [GPU.id, "some other target"]) == [GPU.id]
    started, _ = schedule2.advance()
    assert [(job.key, node) for job, node in started] == [("later", "g2")]


def test_a_job_set_aside_for_another_driver_frees_its_slot_and_keeps_the_sweep_open() -> None:
    """A started job another driver holds (farm.store.leases) leaves the count in flight, so the next job starts
    in its place; the schedule is not finished until its answer comes (finish) or it goes back in line (retry)."""
    schedule = Schedule([export("a"), export("b"), child("a1", "a")], max_inflight=1, timeout_s=60)
    start, _ = schedule.advance()
    assert keys(start) == ["a"]
    schedule.set_aside("a")
    assert schedule.running == 0 and schedule.overdue() == []
    start, _ = schedule.advance()
    assert keys(start) == ["b"]  # a's slot, while a is awaited
    schedule.finish("b", "done")
    assert schedule.advance() == ([], []) and not schedule.finished  # a1 waits on a, and a is not ended
    schedule.retry("a")  # its other driver let go of it: claimed again, first in line
    start, _ = schedule.advance()
    assert keys(start) == ["a"]
    schedule.set_aside("a")
    schedule.finish("a", "cached")  # the other driver's row answered it
    start, _ = schedule.advance()
    assert keys(start) == ["a1"]
    schedule.finish("a1", "done")
    assert schedule.finished and schedule.states["a"] == "cached"
