"""What a person sees in the terminal: a live progress bar per stage and the winners table."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from farm.jobs import Job, Plan, TargetGroup
from farm.stages import STAGES
from farm.metrics import METRICS
from farm.select import Candidate, Objective
from workers.backends import BACKENDS
from workers.backends.base import version_key


class SweepProgress:
    """A bar per pipeline stage; failures are printed above the bars as they happen."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[summary]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.bars: dict[str, TaskID] = {}
        self.counts: dict[str, Counter[str]] = {}

    def on_plan(self, plan: Plan, groups: list[TargetGroup]) -> None:
        for group in groups:
            kind = group.target.kind
            relevant = {version_key(b, kind) for b in BACKENDS.values() if kind in b.target_kinds}
            versions = ", ".join(f"{k} {v}" for k, v in sorted(group.backends.items()) if k in relevant)
            self.console.print(f"target [bold]{escape(group.target.id)}[/] on {len(group.nodes)} node(s): {escape(versions)}")
        for note in plan.notes:
            self.console.print(f"[yellow]note[/] {escape(note)}")
        for stage in STAGES:
            total = len(plan.by_stage(stage))
            if total:
                self.counts[stage] = Counter()
                self.bars[stage] = self.progress.add_task(stage, total=total, summary="")

    def on_job(self, stage: str, state: str, job: Job, error: str | None) -> None:
        if stage not in self.bars:
            return
        self.counts[stage][state] += 1
        summary = " ".join(f"{n} {s}" for s, n in sorted(self.counts[stage].items()))
        self.progress.update(self.bars[stage], advance=1, summary=summary)
        if state == "failed":
            self.console.print(f"[red]failed[/] {stage} {escape(job.label)}: {escape(error or '')}")

    def on_build_progress(self, job: Job, phase: str, done: int, total: int) -> None:
        if "build" in self.bars:
            summary = " ".join(f"{n} {s}" for s, n in sorted(self.counts["build"].items()))
            self.progress.update(self.bars["build"], summary=escape(f"{summary}  {job.label[:40]}: {phase} {done}/{total}"))

    @contextmanager
    def shown(self) -> Iterator[SweepProgress]:
        with self.progress:
            yield self


WINNER_METRICS = ("p50", "p99", "throughput", "cv", "top1_agreement")


def winners_table(rows: list[Candidate], objective: Objective, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("model", "target", "batch", "engine", *(METRICS[m].header for m in WINNER_METRICS), "vs torch"):
        table.add_column(column, justify="left" if column in ("model", "target", "engine") else "right", overflow="fold")
    for c in rows:
        table.add_row(
            c.model,
            escape(c.target),
            str(c.batch_size),
            escape(c.engine),
            *(METRICS[m].format(c.top1_agreement if m == "top1_agreement" else c.value(m)) for m in WINNER_METRICS),
            "-" if c.speedup_vs_torch is None else f"{c.speedup_vs_torch:.2f}x",
        )
    return table


def candidate_json(c: Candidate) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(c) | {"engine": c.engine, "p50_ms": c.p50_ms, "p99_ms": c.p99_ms, "throughput": c.throughput,
                        "cv": c.cv, "top1_agreement": c.top1_agreement, "cosine_mean": c.cosine_mean}
