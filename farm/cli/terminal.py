"""What a person sees in the terminal: a live progress bar per stage and the winners table."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

from farm.run.jobs import Job, Plan, TargetGroup
from farm.run.stages import STAGES
from farm.results.cheapest import Cheapest
from farm.results.metrics import METRICS, WINNER_METRICS, Objective
from farm.results.prices import Prices
from farm.results.evidence import CONFIDENT_MARGIN
from farm.results.labels import EngineLabels
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
        self.progress.start()

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
        """The bars, live from the plan on (on_plan starts them): a sweep refused before it has a plan
        prints nothing here, not even the blank line an empty live display leaves."""
        try:
            yield self
        finally:
            if self.progress.live.is_started:
                self.progress.stop()



def option_defaults() -> dict[str, dict[str, Any]]:
    """Each backend's options at their spec defaults: what engine labels leave out."""
    from farm.run.spec.schema import Backends

    return {name: Backends.model_validate({name: {}}).enabled()[name][0].combinations()[0] for name in Backends.model_fields}


def table_labels(shown: Iterable[Candidate | Untimed], wide: bool = False) -> EngineLabels:
    """The engine labels of one table: the options that tell its builds apart (every option with `wide`)."""
    return EngineLabels.among(shown, option_defaults(), wide)


@dataclass(frozen=True)
class Column:
    header: str
    right: bool = False  # numbers: right-justified


def compact_table(columns: Sequence[str | Column], rows: Iterable[Sequence[str]], *, width: int | None = None,
                  title: str | None = None, caption: str | None = None) -> Table:
    """A table that spends its width on cells: a rule under the heading, one space between columns. With
    `width` (the console's), columns are sized so that no word is broken: each gets its longest word, and
    what is left goes to the columns whose cells would otherwise wrap."""
    heads = [c if isinstance(c, Column) else Column(c) for c in columns]
    cells = [list(row) for row in rows]
    table = Table(title=title, caption=caption, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=0,
                  show_edge=False)
    widths = _fitted_widths(heads, cells, width) if width is not None else [None] * len(heads)
    for head, fixed in zip(heads, widths, strict=True):
        table.add_column(head.header, justify="right" if head.right else "left", overflow="fold", width=fixed)
    for row in cells:
        table.add_row(*row)
    return table


def _fitted_widths(heads: list[Column], rows: list[list[str]], width: int) -> list[int | None]:
    """Each column's width within `width` (one space between columns): none below its longest word, the rest
    shared out by how much each column's cells need; None for all where even the longest words do not fit."""
    texts = [[Text.from_markup(h.header).plain, *(Text.from_markup(r[i]).plain for r in rows)] for i, h in enumerate(heads)]
    shortest = [max((cell_len(word) for t in column for word in t.split()), default=1) for column in texts]
    longest = [max((cell_len(line) for t in column for line in t.splitlines() or [""]), default=1) for column in texts]
    spare = width - (len(heads) - 1) - sum(shortest)
    if spare < 0:
        return [None] * len(heads)
    widths = list(shortest)
    while spare > 0:
        wanting = [i for i in range(len(heads)) if widths[i] < longest[i]]
        if not wanting:
            break
        need = sum(longest[i] - widths[i] for i in wanting)
        for i in wanting:
            grant = min(longest[i] - widths[i], max(1, spare * (longest[i] - widths[i]) // need), spare)
            widths[i] += grant
            spare -= grant
            if not spare:
                break
    return list(widths)


def rivals_text(c: Candidate, labels: EngineLabels) -> str:
    """A winner's verdict with the builds it was judged against: `winner 1.06x (intervals) over KEY label`,
    `tie of 2 with KEY label`."""
    text = verdict_short(c.verdict)
    if not c.rivals:
        return text
    word = "with" if c.tied_with else "over"
    return f"{text} {word} " + ", ".join(labels.named(r, r.build_key) for r in c.rivals)


def winners_table(rows: list[Candidate], objective: Objective, title: str, wide: bool = False, width: int | None = None) -> Table:
    """One model's winners: a row per target and batch size, its build by short key and label, and the
    builds it was judged against (labels print the options that differ between the builds shown)."""
    labels = table_labels([*rows, *(r for c in rows for r in c.rivals)], wide)
    columns = [Column("target"), Column("batch", True), Column("engine"), *(Column(METRICS[m].header, True) for m in WINNER_METRICS),
               Column("vs torch", True), Column("verdict")]
    cells = [[escape(c.target), str(c.batch_size), escape(labels.named(c, c.build_key)),
              *(c.agreement if m == "top1_agreement" else METRICS[m].format(c.value(m)) for m in WINNER_METRICS),
              "-" if c.speedup_vs_torch is None else f"{c.speedup_vs_torch:.2f}x", escape(rivals_text(c, labels))] for c in rows]
    return compact_table(columns, cells, width=width, title=title, caption=RANDOM_WEIGHTS if any(c.random_weights for c in rows) else None)


def untimed_table(rows: list[Untimed], wide: bool = False, width: int | None = None) -> Table:
    labels = table_labels(rows, wide)
    cells = [[u.model, escape(u.target), escape(labels.named(u, u.build_key)), "-" if u.engine_bytes is None else f"{u.engine_bytes / 1e6:.1f}",
              "-" if u.build_seconds is None else f"{u.build_seconds:.1f}"] for u in rows]
    return compact_table(["model", "target", "engine", Column("MB", True), Column("build s", True)], cells, width=width,
                         title="Built, not timed (no runtime for these targets here: sizes and build times only)")


def print_answers(console: Console, answers: list[Answer], untimed: list[Untimed], objective: Objective, title: str,
                  margin: float = CONFIDENT_MARGIN, wide: bool = False) -> None:
    """The winners, a table per model, with their verdicts, one line per verdict note, every candidate the
    rule excluded (and variants rejected before any build) with its numbers, and the build-only targets."""
    rows = [a.winner for a in answers if a.winner is not None]
    if rows:
        console.print(escape(title), highlight=False)
        # a table per model: its rows compare like with like, and the model's name is not a column to pay for
        for model in dict.fromkeys(c.model for c in rows):
            mine = [c for c in rows if c.model == model]
            named = escape(model) + (" (random weights)" if any(c.random_weights for c in mine) else "")
            console.print(winners_table(mine, objective, named, wide, console.width))
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
        console.print(untimed_table(untimed, wide, console.width))


def verdict_json(c: Candidate) -> dict[str, Any] | None:
    from dataclasses import asdict

    return asdict(c.verdict) if c.verdict is not None else None


def candidate_json(c: Candidate, provenance: dict[str, Any] | None = None, margin: float = CONFIDENT_MARGIN) -> dict[str, Any]:
    """A winner as `farm best --json` prints it; `provenance` (farm.results.queries.build_provenance) adds
    `preprocess`, `weights` and `random_weights` under the names bundle manifests use."""
    from dataclasses import asdict

    found = asdict(c)
    found.pop("retimed")  # the raw rounds: in the store and the report, not in every answer
    found.pop("rivals")  # named below by key and engine
    found["evidence"] = c.evidence.to_json(margin) if c.evidence is not None else None
    notes = [n for n in (RANDOM_WEIGHTS if c.random_weights else None,
                         f"{c.reference_note}: a speed result over the builds with finite outputs" if c.reference_note else None) if n]
    # "top1_agreement" is the share the floor read: a detector's box recall there is kept for scripts reading it,
    # under its own name in "box_recall" (and both in "metrics")
    named = [{"build_key": r.build_key, "short_key": r.short_key, "engine": r.engine} for r in c.rivals]
    return found | {"engine": c.engine, "short_key": c.short_key, "runner_up": c.runner_up, "runner_up_key": c.runner_up_key,
                    "tied_with": named if c.tied_with else [], "p50_ms": c.p50, "p99_ms": c.p99, "throughput": c.throughput,
                    "cv": c.cv, "cost_per_million": c.value("cost"), "top1_agreement": c.agreement_share, "box_recall": c.box_recall, "cosine_mean": c.cosine,
                    "speed_only": c.reference_note is not None, "note": "; ".join(notes) or None} | (provenance or {})


def answer_json(a: Answer, provenance: dict[str, Any] | None = None, margin: float = CONFIDENT_MARGIN) -> dict[str, Any]:
    """One group as `farm best --json` prints it: the winner's fields (none when nothing is eligible) and `excluded`."""
    head = candidate_json(a.winner, provenance, margin) if a.winner is not None else {
        "model": a.model, "target": a.target, "batch_size": a.batch_size, "winner": None, "note": "no eligible build"}
    return head | {"versus_runner_up": a.versus_runner_up, "excluded": [x.to_json(margin) for x in a.excluded]}


def cheapest_table(answers: list[Cheapest], wide: bool = False, width: int | None = None) -> Table:
    """Each model's targets, cheapest first: the build and batch size that costs least under the bound, or why none."""
    labels = table_labels([o.candidate for a in answers for o in a.offers if o.candidate is not None], wide)
    cells = []
    for a in answers:
        for rank, o in enumerate(a.offers):
            c = o.candidate
            cells.append([a.model, escape(o.target), "-" if c is None else str(c.batch_size),
                          escape(o.why) if c is None else escape(labels.named(c, c.build_key)),
                          "-" if c is None else METRICS["p99"].format(c.p99), "-" if c is None else METRICS["throughput"].format(c.throughput),
                          "-" if c is None or c.usd_per_hour is None else f"{c.usd_per_hour:.2f}", METRICS["cost"].format(o.cost),
                          "cheapest" if rank == 0 and c is not None else ""])
    return compact_table(["model", "target", Column("batch", True), "engine", Column("p99 ms", True), Column("samples/s", True),
                          Column("USD/h", True), Column("USD/M", True), ""], cells, width=width,
                         title=f"Cheapest target with p99 <= {answers[0].max_p99_ms:g} ms" if answers else "Cheapest target")


def print_cheapest(console: Console, answers: list[Cheapest], prices: Prices, wide: bool = False) -> None:
    console.print(cheapest_table(answers, wide, console.width))
    console.print(f"prices: USD per hour, {escape(prices.origin)} (sources: `farm cheapest --json`, docs/cost.md)", highlight=False, soft_wrap=True)


def cheapest_json(a: Cheapest) -> dict[str, Any]:
    return {"model": a.model, "answer": a.answer.target if a.answer else None,
            "targets": [{"target": o.target, "why": o.why or None, "cost_per_million": o.cost,
                         "build": candidate_json(o.candidate) if o.candidate is not None else None} for o in a.offers]}
