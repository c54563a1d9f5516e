"""`farm diff` and `farm baseline`: two sweeps (of one store or two, or a sweep and a named baseline) compared
engine by engine (farm.results.diff; the rules in docs/verdicts.md, section 7)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from farm.cli.common import (
    NOTHING,
    OK,
    SOME_FAILED,
    AsJson,
    DataDir,
    DbUrl,
    err,
    fail,
    fitted_console,
    one_line_errors,
    results_store,
    writable_store,
)
from farm.results.labels import short_key
from farm.results.verdict import MIN_MARGIN
from farm.store import Store
from farm.store.db import shown_url

if TYPE_CHECKING:
    from farm.results.diff import Diff, EngineRun

COLOURS = {"slower": "red", "faster": "green"}


def _side(store: Store, sweep_id: int | None, what: str) -> tuple[int, str, list[EngineRun]]:
    """The sweep (the newest that did work where none is given), its name for a person, and its engines."""
    from farm.results import history, queries

    with store.session() as s:
        found = queries.sweep(s, sweep_id)
        if found is None:
            raise fail(f"{what}: no sweep {sweep_id}" if sweep_id is not None else f"{what}: no sweep recorded yet")
        return found.id, f"sweep {found.id} ({found.name})", history.sweep_engines(s, found.id)


def diff(
    first: Annotated[int | None, typer.Argument(help="Sweep A (the before). With --baseline: the sweep compared with it.")] = None,
    second: Annotated[int | None, typer.Argument(help="Sweep B (the after); default the newest sweep (of the --data-dir-b store where given).")] = None,
    baseline: Annotated[str | None, typer.Option("--baseline", help="Compare with this saved baseline (farm baseline save) "
                                                                    "instead of sweep A.")] = None,
    data_dir_b: Annotated[Path | None, typer.Option("--data-dir-b", help="Sweep B is in this other store (its data dir).")] = None,
    db_url_b: Annotated[str | None, typer.Option("--db-url-b", help="Sweep B is in this other store (its database URL).")] = None,
    fail_on_regression: Annotated[float | None, typer.Option(min=0.0, help="Exit 1 when an engine is significantly slower by more "
                                                                            "than this many percent, or its fidelity dropped.")] = None,
    min_change: Annotated[float, typer.Option(min=0.0, help="A significant change smaller than this many percent is "
                                                            "'no change'.")] = MIN_MARGIN * 100,
    data_dir: DataDir = None,
    db_url: DbUrl = None,
    as_json: AsJson = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV (one line per pair, then the unmatched engines).")] = False,
    wide: Annotated[bool, typer.Option("--wide", help="Engine labels with every option (by default only those that differ "
                                                     "between the engines shown, and not at their defaults).")] = False,
) -> None:
    """Compare two sweeps engine by engine: faster, slower or no change (a bootstrap on the stored raw timings'
    medians), the fidelity change, and which library versions changed. Engines match on model, precision and
    calibration method, backend and options, target kind and batch size; the rest are listed as unmatched.

    Exits 0, or 1 with --fail-on-regression when a pair regressed; 2 on bad input."""
    from farm.results import history
    from farm.results.diff import diff as compare
    from farm.results.diff import to_csv, to_json

    with one_line_errors(as_json):
        if as_json and as_csv:
            raise fail("--json and --csv: give one")
        store = results_store(data_dir, db_url)
        other = results_store(data_dir_b, db_url_b) if data_dir_b or db_url_b else store
        if baseline is not None:
            if second is not None:
                raise fail("--baseline NAME takes one sweep (the one compared with the baseline), not two")
            with store.session() as s:
                named = history.baseline(s, baseline)
                known = [b.name for b, _sweep in history.baselines(s)]
            if named is None:
                raise fail(f"--baseline {baseline!r}: no such baseline (saved: {', '.join(known) or 'none'}; farm baseline save NAME)")
            a_id, a_name, a_runs = _side(store, named.sweep_id, f"baseline {baseline}")
            a_name = f"baseline {baseline}: {a_name}"
            b_id, b_name, b_runs = _side(other, first, "sweep")
        else:
            if first is None:
                raise fail("give sweep A (and B, default the newest), or --baseline NAME")
            a_id, a_name, a_runs = _side(store, first, "sweep A")
            b_id, b_name, b_runs = _side(other, second, "sweep B")
        if other is not store:
            b_name += f" of {shown_url(other.location.url)}"  # a PostgreSQL URL's password is not printed
        for name, runs in ((a_name, a_runs), (b_name, b_runs)):
            if not runs:
                raise fail(f"{name} timed no engine: nothing to compare", NOTHING)
        found = compare(a_runs, b_runs, a_name, b_name, min_change / 100)
        regressed = found.regressions(fail_on_regression) if fail_on_regression is not None else []
    if as_json:
        print(json.dumps(to_json(found, fail_on_regression) | {"sweep_a": a_id, "sweep_b": b_id,
                                                               "regressions": len(regressed)}, indent=2, default=str))
    elif as_csv:
        print(to_csv(found), end="")
    else:
        _print_diff(fitted_console(), found, wide)
    if regressed:
        err.print(f"[red]regression:[/] {len(regressed)} engine(s) significantly slower by more than {fail_on_regression:g}% "
                  f"or with fidelity dropped: " + "; ".join(escape(f"{p.a.engine} @ {p.a.target} batch {p.a.batch_size}")
                                                            for p in regressed), highlight=False, soft_wrap=True)
    raise typer.Exit(SOME_FAILED if regressed else OK)


def _print_diff(console: Console, found: Diff, wide: bool) -> None:
    from farm.cli.terminal import Column, compact_table, option_defaults
    from farm.results.diff import describe_p, describe_ratio, describe_versions
    from farm.results.labels import EngineLabels

    shown = [run for p in found.pairs for run in (p.a, p.b)] + found.only_a + found.only_b
    labels = EngineLabels.among(shown, option_defaults(), wide)
    rows = []
    for p in found.pairs:
        colour = COLOURS.get(p.change)
        rows.append([
            escape(f"{p.a.model} {labels.of(p.a)}"), escape(p.a.target), str(p.a.batch_size), _ms(p.a.p50), _ms(p.b.p50),
            describe_ratio(p.speed), describe_p(p.speed), f"[{colour}]{p.change}[/]" if colour else p.change,
            escape(p.fidelity.describe()),
            escape("; ".join(filter(None, (describe_versions(p.versions), *p.changes))) or "-"),
        ])
    title = f"{escape(found.a_name)} -> {escape(found.b_name)}: {len(found.pairs)} engines matched"
    console.print(compact_table(["engine", "target", Column("batch", True), Column("p50 A ms", True), Column("p50 B ms", True),
                                 "B/A [95%]", Column("p", True), "change", "top-1 A->B", "versions, changes"], rows,
                                width=console.width, title=title))
    console.print(f"change: a bootstrap on the medians of the raw timings, p < 0.05 and at least {found.min_change:.0%} apart; "
                  "otherwise no change", highlight=False, soft_wrap=True)
    if found.drift is not None:
        console.print(f"median B/A over the {len(found.pairs)} pairs: {found.drift:.3f}x (a shift every engine shares is more likely "
                      "the machine than the engines: --min-change sets how much drift to ignore)", highlight=False, soft_wrap=True)
    for side, runs in (("only in A", found.only_a), ("only in B", found.only_b)):
        for r in runs:
            console.print(f"[yellow]{side}[/] {escape(r.model)} {escape(labels.of(r))} @ {escape(r.target)} batch {r.batch_size} "
                          f"({short_key(r.build_key)})", highlight=False, soft_wrap=True)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


baseline_app = typer.Typer(no_args_is_help=True, help="Name a sweep as a baseline, and list the baselines (farm diff --baseline NAME).")


@baseline_app.command("save")
def save(
    name: Annotated[str, typer.Argument(help="The baseline's name, e.g. trt-10.13 or release-1.4.")],
    sweep_id: Annotated[int | None, typer.Argument(help="The sweep; default the newest that did work.")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Move NAME to this sweep when it names another.")] = False,
    data_dir: DataDir = None,
    db_url: DbUrl = None,
) -> None:
    """Save SWEEP as baseline NAME. It names the sweep: re-running the sweep's jobs later (--redo-from) keeps
    the rows it measured, so the baseline still compares what it measured."""
    from farm.results import queries
    from farm.store.baselines import BaselineExists, save_baseline

    with one_line_errors():
        if not name.strip():
            raise fail("baseline name: empty")
        results_store(data_dir, db_url, current=False).close()  # one line where there is no store (none is made)
        store = writable_store(data_dir, db_url)
        with store.session() as s, s.begin():
            found = queries.sweep(s, sweep_id)
            if found is None:
                raise fail(f"no sweep {sweep_id}" if sweep_id is not None else "no sweep recorded yet")
            try:
                save_baseline(s, name, found.id, replace=replace)
            except BaselineExists as exc:
                raise fail(f"{exc}: --replace moves it to sweep {found.id}") from None
            shown = f"baseline {name!r} is sweep {found.id} ({found.name}, started {found.started_at:%Y-%m-%d %H:%M:%S})"
    fitted_console().print(shown, highlight=False, markup=False, soft_wrap=True)


@baseline_app.command("list")
def list_baselines(data_dir: DataDir = None, db_url: DbUrl = None, as_json: AsJson = False) -> None:
    """The saved baselines: name, sweep, when saved."""
    from farm.cli.terminal import Column, compact_table
    from farm.results import history

    with one_line_errors(as_json):
        store = results_store(data_dir, db_url)
        with store.session() as s:
            rows = [(b.name, b.sweep_id, sweep.name, sweep.started_at, b.created_at) for b, sweep in history.baselines(s)]
    if as_json:
        print(json.dumps([{"name": n, "sweep": i, "sweep_name": sn, "sweep_started_at": str(st), "saved_at": str(c)}
                          for n, i, sn, st, c in rows]))
        return
    console = fitted_console()
    if not rows:
        console.print("no baselines saved: farm baseline save NAME [SWEEP]", highlight=False, markup=False)
        return
    console.print(compact_table(["name", Column("sweep", True), "sweep name", "sweep started", "saved"],
                                [[escape(n), str(i), escape(sn), f"{st:%Y-%m-%d %H:%M}", f"{c:%Y-%m-%d %H:%M}"] for n, i, sn, st, c in rows],
                                width=console.width))
