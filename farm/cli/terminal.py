"""What a person sees in the terminal: a live progress bar per stage and the winners table."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from farm.run.jobs import Job, Plan, TargetGroup
from farm.run.stages import STAGES
from farm.results.metrics import METRICS, WINNER_METRICS, Objective
from farm.results.evidence import CONFIDENT_MARGIN
from farm.results.select import RANDOM_WEIGHTS, Answer, Candidate, Untimed
from farm.results.verdict import short as verdict_short
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
            TimeRemainingColumn(),
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
        for change in plan.changes:
            self.console.print(f"[cyan]changed[/] {escape(change)}", soft_wrap=True, highlight=False)
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
            # soft_wrap: a long error (ONNX Runtime's unknown-op message) stays one line, whatever the console's width
            self.console.print(f"[red]failed[/] {stage} {escape(job.label)}: {escape(error or '')}", soft_wrap=True, highlight=False)
        elif state == "rejected":  # a finding: judged and not viable, kept (and not tried again) with its numbers
            self.console.print(f"[yellow]rejected[/] {stage} {escape(job.label)}: {escape(error or '')}", soft_wrap=True, highlight=False)

    def on_build_progress(self, job: Job, phase: str, done: int, total: int) -> None:
        if "build" in self.bars:
            summary = " ".join(f"{n} {s}" for s, n in sorted(self.counts["build"].items()))
            self.progress.update(self.bars["build"], summary=escape(f"{summary}  {job.label[:40]}: {phase} {done}/{total}"))

    @contextmanager
    def shown(self) -> Iterator[SweepProgress]:
        with self.progress:
            yield self



def winners_table(rows: list[Candidate], objective: Objective, title: str) -> Table:
    table = Table(title=title, title_justify="left", caption=RANDOM_WEIGHTS if any(c.random_weights for c in rows) else None)
    for column in ("model", "target", "batch", "engine", *(METRICS[m].header for m in WINNER_METRICS), "vs torch", "verdict", "runner-up"):
        table.add_column(column, justify="left" if column in ("model", "target", "engine", "verdict", "runner-up") else "right",
                         overflow="fold")
    for c in rows:
        table.add_row(
            c.model + (" (random weights)" if c.random_weights else ""),
            escape(c.target),
            str(c.batch_size),
            escape(c.engine),
            *(c.agreement if m == "top1_agreement" else METRICS[m].format(c.value(m)) for m in WINNER_METRICS),
            "-" if c.speedup_vs_torch is None else f"{c.speedup_vs_torch:.2f}x",
            verdict_short(c.verdict),
            escape(c.runner_up or "-"),
        )
    return table


def untimed_table(rows: list[Untimed]) -> Table:
    table = Table(title="Built, not timed (no runtime for these targets here: sizes and build times only)", title_justify="left")
    for column in ("model", "target", "engine", "MB", "build s"):
        table.add_column(column, justify="right" if column in ("MB", "build s") else "left", overflow="fold")
    for u in rows:
        share = f" ({u.quantized_fraction:.0%} {u.precision})" if u.quantized_fraction is not None and u.quantized_fraction < 1 else ""
        options = " ".join(f"{k}={v}" for k, v in u.options.items())
        table.add_row(u.model, escape(u.target), escape(f"{u.backend} {u.precision} {u.method or ''}{share} {options}".replace("  ", " ")),
                      "-" if u.engine_bytes is None else f"{u.engine_bytes / 1e6:.1f}", "-" if u.build_seconds is None else f"{u.build_seconds:.1f}")
    return table


def print_answers(console: Console, answers: list[Answer], untimed: list[Untimed], objective: Objective, title: str,
                  margin: float = CONFIDENT_MARGIN) -> None:
    """The winners table with its verdicts, one line per verdict note, every candidate the rule excluded
    (and variants rejected before any build) with its numbers, and the build-only targets."""
    rows = [a.winner for a in answers if a.winner is not None]
    if rows:
        console.print(winners_table(rows, objective, title))
        for c in rows:
            if c.verdict is not None and c.verdict.note and c.verdict.outcome != "only":
                console.print(f"  {c.model} @ {escape(c.target)} batch {c.batch_size}: {escape(c.verdict.note)}", highlight=False)
            if c.kernel_note:
                console.print(f"  {c.model} @ {escape(c.target)}: {escape(c.kernel_note)}", highlight=False)
    floors = {a.winner.model: a.winner.evidence.noise for a in answers if a.winner and a.winner.evidence and a.winner.evidence.noise}
    for model, noise in floors.items():  # what fp32 itself does to these images: no build is blamed for as much
        console.print(f"  {model}: noise floor: {escape(noise.describe())}", highlight=False, soft_wrap=True)
    for note in dict.fromkeys(f"{a.model}: {a.speed_only}: a speed result over the builds with finite outputs"
                              for a in answers if a.speed_only):
        console.print(f"[yellow]{escape(note)}[/]", highlight=False, soft_wrap=True)
    shown: set[str] = set()
    for a in answers:
        head = f"{a.model} @ {a.target} batch {a.batch_size}" + ("" if a.winner else " (no eligible build)")
        for x in a.excluded:
            line = x.line(margin)
            if x.stage == "variant" and line in shown:  # a rejected variant is one line, not one per group
                continue
            shown.add(line)
            console.print(f"  {escape(head if x.stage != 'variant' else a.model)}: {escape(line)}", highlight=False, soft_wrap=True)
    if untimed:
        console.print(untimed_table(untimed))


def verdict_json(c: Candidate) -> dict[str, Any] | None:
    from dataclasses import asdict

    return asdict(c.verdict) if c.verdict is not None else None


def candidate_json(c: Candidate, provenance: dict[str, Any] | None = None, margin: float = CONFIDENT_MARGIN) -> dict[str, Any]:
    """A winner as `farm best --json` prints it; `provenance` (farm.results.queries.build_provenance) adds
    `preprocess`, `weights` and `random_weights` under the names bundle manifests use."""
    from dataclasses import asdict

    found = asdict(c)
    found.pop("retimed")  # the raw rounds: in the store and the report, not in every answer
    found["evidence"] = c.evidence.to_json(margin) if c.evidence is not None else None
    notes = [n for n in (RANDOM_WEIGHTS if c.random_weights else None,
                         f"{c.reference_note}: a speed result over the builds with finite outputs" if c.reference_note else None) if n]
    # "top1_agreement" is the share the floor read: a detector's box recall there is kept for scripts reading it,
    # under its own name in "box_recall" (and both in "metrics")
    return found | {"engine": c.engine, "p50_ms": c.p50, "p99_ms": c.p99, "throughput": c.throughput,
                    "cv": c.cv, "top1_agreement": c.agreement_share, "box_recall": c.box_recall, "cosine_mean": c.cosine,
                    "speed_only": c.reference_note is not None, "note": "; ".join(notes) or None} | (provenance or {})


def answer_json(a: Answer, provenance: dict[str, Any] | None = None, margin: float = CONFIDENT_MARGIN) -> dict[str, Any]:
    """One group as `farm best --json` prints it: the winner's fields (none when nothing is eligible) and `excluded`."""
    head = candidate_json(a.winner, provenance, margin) if a.winner is not None else {
        "model": a.model, "target": a.target, "batch_size": a.batch_size, "winner": None, "note": "no eligible build"}
    return head | {"versus_runner_up": a.versus_runner_up, "excluded": [x.to_json(margin) for x in a.excluded]}
