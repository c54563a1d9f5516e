"""`farm`: run sweeps, follow them, and read the winners.

Every command takes --data-dir (default ./farm-data, or FARM_DATA_DIR) and --db-url (default
SQLite in the data dir, or FARM_DB_URL). Errors are one line on stderr with a non-zero exit.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from farm.cli_common import (
    AsJson,
    DataDir,
    DbUrl,
    FloorOption,
    ObjectiveOption,
    checked_objective,
    err,
    fail,
    one_line_errors,
    results_store,
    writable_store,
)
from farm.cli_common import out as console
from farm.cli_common import out
from farm.store import StoreLocation

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_show_locals=False)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@app.command()
def sweep(
    spec: Annotated[Path, typer.Argument(help="Sweep spec (YAML).")],
    data_dir: DataDir = None,
    db_url: DbUrl = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster address; default RAY_ADDRESS, else a local Ray.")] = None,
    force: Annotated[bool, typer.Option(help="Redo jobs that already finished.")] = False,
    objective: Annotated[str | None, typer.Option(help="Objective of the closing winners table: p50, p99 or throughput; default the spec's.")] = None,
) -> None:
    """Run a sweep: export, build, benchmark and compare every job of SPEC, then print the winners."""
    from farm.driver import run_sweep
    from farm.report import SweepProgress, print_answers
    from farm.select import Constraints, candidates, untimed, winners
    from farm.spec import load_spec

    # SIGTERM (a job scheduler, `timeout`) ends the sweep like Ctrl-C: recorded as interrupted, resumable.
    signal.signal(signal.SIGTERM, _interrupt)
    with one_line_errors():
        parsed, base = load_spec(spec)
        objective = checked_objective(objective or parsed.selection.objective)
        store = writable_store(data_dir, db_url)
        progress = SweepProgress(console)
        with progress.shown():
            result = run_sweep(parsed, base, str(spec), store, address=address, force=force,
                               listener=progress.on_job, on_plan=progress.on_plan,
                               on_build_progress=progress.on_build_progress)
        constraints = Constraints.of(parsed.fidelity.constraints())
        with store.session() as s:
            rows = winners(candidates(s, sweep_id=result.sweep_id), objective, constraints)
            build_only = untimed(s, sweep_id=result.sweep_id)
        failed = sum(1 for state in result.states.values() if state == "failed")
        if not rows:
            console.print(f"no eligible winner: no timed build passed every stage with {constraints.describe()}")
        print_answers(console, rows, build_only, objective, f"Winners of sweep {result.sweep_id} ({parsed.name}) by {objective}, {constraints.describe()}")
        console.print(f"sweep {result.sweep_id}: {len(result.states)} jobs, {failed} failed; results in {store.location.url}")


@app.command()
def status(
    sweep_id: Annotated[int | None, typer.Argument(help="Sweep id; default the latest.")] = None,
    data_dir: DataDir = None,
    db_url: DbUrl = None,
    as_json: AsJson = False,
) -> None:
    """Show a sweep's progress per stage and its failures."""
    from farm import queries

    with one_line_errors():
        store = results_store(data_dir, db_url)
        with store.session() as s:
            found = queries.sweep(s, sweep_id)
            if found is None:
                raise fail(f"no sweep {sweep_id if sweep_id is not None else 'recorded yet'}")
            by_stage = queries.stage_progress(s, found.id)
            failures = queries.failures(s, found.id)
            loads = queries.node_loads(s, found.id)
            running = queries.running(s, found.id)
            left_s = queries.remaining_seconds(found, by_stage, datetime.now(UTC))
        if as_json:
            print(json.dumps({"sweep": found.id, "name": found.name, "status": found.status, "stages": by_stage,
                              "nodes": [asdict(n) for n in loads], "running": [asdict(r) for r in running], "eta_s": left_s,
                              "failures": [{"stage": f.stage, "job": f.label, "error": f.error} for f in failures]}, default=str))
            return
        console.print(f"sweep {found.id} ({found.name}): {found.status}, started {found.started_at:%Y-%m-%d %H:%M:%S}"
                      + ("" if left_s is None else f", about {timedelta(seconds=round(left_s))} left at this pace"))
        table = Table("stage", *queries.STATES)
        for stage, states in by_stage.items():
            table.add_row(stage, *(str(states[state]) for state in queries.STATES))
        console.print(table)
        if loads:
            nodes = Table("node", "running", "done", "failed")
            for load in loads:
                nodes.add_row(escape(load.node), str(load.running), str(load.done), str(load.failed))
            console.print(nodes)
        for job in running:
            since = "" if job.started is None else f" since {job.started:%H:%M:%S}"
            console.print(f"[cyan]running[/] {job.stage} {escape(job.label)} on {escape(job.node or '?')}{since}", highlight=False)
        for failure in failures:
            console.print(f"[red]failed[/] {failure.stage} {failure.label}: {failure.error}", highlight=False)


@app.command()
def best(
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    target: Annotated[str | None, typer.Option(help="Only targets whose id contains this text.")] = None,
    objective: ObjectiveOption = "p50",
    min_top1_agreement: FloorOption = 0.99,
    min_cosine: Annotated[float | None, typer.Option(help="Fidelity constraint: mean cosine similarity with fp32.")] = None,
    max_accuracy_drop: Annotated[float | None, typer.Option(help="Fidelity constraint: labelled top-1 accuracy below fp32's.")] = None,
    sweep_id: Annotated[int | None, typer.Option("--sweep", help="Only results of this sweep.")] = None,
    data_dir: DataDir = None,
    db_url: DbUrl = None,
    as_json: AsJson = False,
) -> None:
    """The answer per model, target and batch size: the fastest build that meets the constraints, with a
    verdict on whether it really beats the runner-up; and the builds of targets nothing here can time."""
    from dataclasses import asdict

    from farm.report import candidate_json, print_answers
    from farm.select import Constraints, candidates, untimed, winners

    with one_line_errors():
        chosen = checked_objective(objective)
        constraints = Constraints(min_top1_agreement, min_cosine, max_accuracy_drop)
        store = results_store(data_dir, db_url)
        with store.session() as s:
            rows = winners(candidates(s, model=model, target=target, sweep_id=sweep_id), chosen, constraints)
            build_only = untimed(s, model=model, target=target, sweep_id=sweep_id)
        if as_json:
            print(json.dumps({"objective": chosen, "constraints": asdict(constraints), "winners": [candidate_json(r) for r in rows],
                              "built_not_timed": [asdict(u) for u in build_only]}, indent=2, default=str))
            return
        if not rows and not build_only:
            raise fail("no eligible build: run a sweep, or relax the constraints (--min-top1-agreement ...)", 1)
        print_answers(console, rows, build_only, chosen, f"Winners by {objective}, {constraints.describe()}")


@app.command()
def report(
    sweep_id: Annotated[int, typer.Argument(help="Sweep id (farm status lists the latest).")],
    format: Annotated[str, typer.Option("--format", help="csv, html or json.")] = "html",
    out_file: Annotated[Path | None, typer.Option("--out", help="File to write; default farm-sweep-ID.FORMAT here.")] = None,
    data_dir: DataDir = None,
    db_url: DbUrl = None,
) -> None:
    """Write one file a person can mail: the winners with verdicts, the noise, the failures, the environment."""
    from farm.reports import ReportError, render_report

    with one_line_errors():
        store = results_store(data_dir, db_url)
        try:
            with store.session() as s:
                text = render_report(s, sweep_id, format)
        except ReportError as exc:
            raise fail(str(exc)) from None
        path = out_file or Path(f"farm-sweep-{sweep_id}.{format}")
        path.write_text(text)
    out.print(f"report of sweep {sweep_id} in {path}", highlight=False, markup=False)


@app.command()
def doctor(as_json: AsJson = False) -> None:
    """What this machine offers: CPU, GPUs, and each backend's version (or how to install it)."""
    from workers.backends import BACKENDS
    from workers.device import describe

    info = describe()
    backends = [BACKENDS[name]().availability() for name in BACKENDS]
    if as_json:
        print(json.dumps({"device": asdict(info), "backends": [asdict(b) | {"ok": b.ok} for b in backends],
                          "targets": [t.id for t in info.targets()], "python": sys.version.split()[0]}, default=str))
        return
    cpu = info.cpu
    console.print(f"host      {info.hostname}")
    console.print(f"cpu       {cpu.model} ({cpu.arch}, {cpu.physical_cores} cores / {cpu.logical_cores} threads, {', '.join(cpu.isa) or 'no SIMD flags'})")
    if info.gpus:
        for gpu in info.gpus:
            console.print(f"gpu {gpu.index}     {gpu.name}, sm_{gpu.compute_capability.replace('.', '')}, {gpu.memory_bytes / 2**30:.0f} GiB, driver {gpu.driver}")
    else:
        console.print(f"gpu       none{f' ({info.gpu_error})' if info.gpu_error else ''}")
    table = Table("backend", "version", "detail")
    for b in backends:
        table.add_row(b.name, escape(b.version) if b.version else "[red]missing[/]", escape(b.detail))
    console.print(table)
    console.print("targets   " + ", ".join(t.id for t in info.targets()))


APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"

def dashboard(
    host: Annotated[str, typer.Option(help="Address to listen on; loopback unless you mean to share it.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8501,
    data_dir: DataDir = None,
    db_url: DbUrl = None,
) -> None:
    """Open the results in a browser: sweeps, results, winners, engines (Streamlit, read-only)."""
    location = StoreLocation.resolve(data_dir, db_url)
    env = os.environ | {"FARM_DATA_DIR": str(location.data_dir), "FARM_DB_URL": location.url}
    command = [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.headless=true", f"--server.address={host}", f"--server.port={port}",
        "--browser.gatherUsageStats=false", "--server.fileWatcherType=none", "--client.toolbarMode=viewer",
    ]
    err.print(f"farm dashboard on http://{host}:{port} reading {location.url}", highlight=False, markup=False)
    # Become the Streamlit server (same pid), so stopping `farm dashboard` stops it.
    os.execvpe(command[0], command, env)


def pull(
    model: Annotated[str, typer.Argument(help="Model name, as in the sweep spec.")],
    target: Annotated[str, typer.Option(help="Target id, or a unique part of one: 'NVIDIA H200', 'sm_89', 'cpu'.")],
    objective: ObjectiveOption = "p50",
    min_top1_agreement: FloorOption = 0.99,
    batch: Annotated[int | None, typer.Option(help="Batch size the winner is chosen at; default the smallest (largest for throughput).")] = None,
    precision: Annotated[str | None, typer.Option(help="Only builds of this precision (on a build-only target: the one you want).")] = None,
    rule: Annotated[str, typer.Option(help="On a build-only target (rtx:*) without --precision: timed-precision (the precision "
                                            "that won on the timed targets) or smallest.")] = "timed-precision",
    out_dir: Annotated[Path | None, typer.Option("--out", help="Folder for the engine and manifest.json; default ./<bundle name>.")] = None,
    data_dir: DataDir = None,
    db_url: DbUrl = None,
) -> None:
    """Write the winning engine of MODEL on a target and its manifest.json, checking the engine's sha256.

    On a build-only target (TensorRT-RTX ahead of time) nothing was timed: say --precision, or let
    --rule choose, and the rule used is printed."""
    from farm.delivery import load_engine, pick_build, write_engine

    with one_line_errors():
        store = results_store(data_dir, db_url)
        with store.session() as s:
            picked = pick_build(s, model, target, checked_objective(objective), min_top1_agreement, batch, precision, rule)
            record = load_engine(s, picked.build_key)
        engine_path, manifest_path = write_engine(store, picked.build_key, out_dir or Path(record.bundle_name))
    out.print(picked.summary, highlight=False, soft_wrap=True, markup=False)
    out.print(f"chosen    {picked.rule}", highlight=False, soft_wrap=True, markup=False)
    out.print(f"engine    {engine_path} (sha256 {record.engine_sha256} verified)", highlight=False, soft_wrap=True, markup=False)
    out.print(f"manifest  {manifest_path}", highlight=False, soft_wrap=True, markup=False)
    extra = record.engine_manifest.get("extra") or {}
    if extra.get("how_to_load"):  # a PyTorch engine: a package or a recipe, and how to run it
        out.print(f"load      {extra['how_to_load']}", highlight=False, soft_wrap=True, markup=False)
    if str(extra.get("reproducible", "")).startswith("in-process only"):
        out.print("note      this winner is a recipe (model source + weights + options), not a compiled artifact: "
                  "it compiles again where it runs", highlight=False, soft_wrap=True, markup=False)


def export_triton(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder of the Triton model repository (created).")],
    objective: ObjectiveOption = "p50",
    min_top1_agreement: FloorOption = 0.99,
    batch: Annotated[int | None, typer.Option(help="Batch size winners are chosen at; default the smallest (largest for throughput).")] = None,
    data_dir: DataDir = None,
    db_url: DbUrl = None,
) -> None:
    """Write a Triton model repository: per model, the winning TensorRT engine of every GPU (cc_model_filenames)."""
    from farm.delivery import triton_repository

    with one_line_errors():
        store = results_store(data_dir, db_url)
        repo = triton_repository(store, out_dir, objective=checked_objective(objective), min_top1_agreement=min_top1_agreement,
                                 batch_size=batch)
    for model in repo.models:
        files = ", ".join(f"{cc or 'default'} -> {name}" for cc, name in sorted(model.files.items()))
        out.print(f"{model.name:<28} {model.platform:<17} max_batch_size {model.max_batch_size:<4} {files}", highlight=False, soft_wrap=True, markup=False)
    for note in repo.notes:
        err.print(f"note: {note}", style="yellow", highlight=False, soft_wrap=True, markup=False)
    if not repo.models:
        raise fail("no model could be exported (see the notes above)", 1)
    out.print(f"Triton model repository in {out_dir}", highlight=False, markup=False)



app.command()(dashboard)
app.command()(pull)
deliver = typer.Typer(no_args_is_help=True, help="Write winners in a serving format.")
deliver.command("triton")(export_triton)
app.add_typer(deliver, name="deliver")
# The first name of `farm deliver`: kept so that scripts written for it still run.
app.add_typer(deliver, name="export", hidden=True)

if __name__ == "__main__":
    app()
