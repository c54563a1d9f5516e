"""`farm`: run sweeps, follow them, and read the winners.

Every command takes --data-dir (default ./farm-data, or FARM_DATA_DIR) and --db-url (default
SQLite in the data dir, or FARM_DB_URL).
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

from farm.cli.common import (
    EXIT_CODES,
    NOTHING,
    OK,
    SOME_FAILED,
    AsJson,
    DataDir,
    DbUrl,
    FloorOption,
    ObjectiveOption,
    Wide,
    OneLineGroup,
    check_address,
    checked_objective,
    data_warnings,
    err,
    fail,
    fitted_console,
    one_line_errors,
    results_store,
    warn,
    writable_store,
)
from farm.cli import answers, history
from farm.cli.common import out as console
from farm.cli.common import out
from farm.store import StoreLocation

app = typer.Typer(cls=OneLineGroup, add_completion=False, no_args_is_help=True, help=f"{__doc__}\n\n{EXIT_CODES}",
                  pretty_exceptions_show_locals=False)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("farm")
        except PackageNotFoundError:  # a checkout used without `pip install -e .`
            found = "unknown (not installed)"
        print(f"farm {found}")
        raise typer.Exit(OK)


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_version, help="Print farm's version and exit.")] = False,
) -> None:
    # Options of `farm` itself (before the command); the group's help is the module docstring.
    pass


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@app.command()
def sweep(
    spec: Annotated[Path, typer.Argument(help="Sweep spec (YAML).")],
    data_dir: DataDir = None,
    db_url: DbUrl = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster address; default RAY_ADDRESS, else a local Ray.")] = None,
    force: Annotated[bool, typer.Option(help="Redo jobs that already finished.")] = False,
    redo_from: Annotated[str | None, typer.Option(help="Redo finished jobs of this stage and every later one (e.g. "
                                                        "benchmark: time the stored engines again, rebuild nothing).")] = None,
    objective: Annotated[str | None, typer.Option(help="Objective of the closing winners table: p50, p99 or throughput; default the spec's.")] = None,
    wide: Wide = False,
) -> None:
    """Run a sweep: export, build, benchmark and compare every job of SPEC, then print the winners.

    Exits 0 when every job ended done or cached, 1 when some failed, 3 when none succeeded, 2 when the
    spec or its files are wrong (checked before Ray starts: nothing ran)."""
    from farm.run import cluster
    from farm.run.driver import run_sweep
    from farm.cli.terminal import SweepProgress, print_answers
    from farm.results.select import Constraints, answers, candidates, rejected_variants, untimed
    from farm.run.plan import target_problem
    from farm.run.spec import SpecError, check_inputs, load_spec

    # SIGTERM (a job scheduler, `timeout`) ends the sweep like Ctrl-C: recorded as interrupted, resumable.
    signal.signal(signal.SIGTERM, _interrupt)
    console = fitted_console()
    with one_line_errors(), data_warnings():
        parsed, base = load_spec(spec)
        objective = checked_objective(objective or parsed.selection.objective)
        check_inputs(parsed, base, str(spec))  # before the store is created and Ray starts: a mistake costs nothing
        check_address(address)
        redo = redone_stages(force, redo_from)
        if address or os.environ.get("RAY_ADDRESS"):
            # Before the store: a cluster that refuses us (auth) leaves nothing behind. A local Ray starts
            # later, and not at all when the store already holds every job of the plan.
            cluster.connect(address, cluster.ray_log_file(StoreLocation.resolve(data_dir, db_url).data_dir))
        elif (problem := target_problem(parsed, cluster.local_targets(parsed.rtx_targets()))) is not None:
            raise SpecError(f"{spec}: {problem}")  # this machine is the cluster: no store for a sweep with nothing to run
        store = writable_store(data_dir, db_url)
        progress = SweepProgress(console)
        with progress.shown():
            result = run_sweep(parsed, base, str(spec), store, address=address, redo=redo,
                               listener=progress.on_job, on_plan=progress.on_plan,
                               on_build_progress=progress.on_build_progress)
        constraints = Constraints.of(parsed.fidelity.constraints())
        with store.session() as s:
            found = answers(candidates(s, sweep_id=result.sweep_id), objective, constraints,
                            rejected_variants(s, sweep_id=result.sweep_id))
            build_only = untimed(s, sweep_id=result.sweep_id)
        if not any(a.winner for a in found):
            console.print(f"no eligible winner: no timed build passed every stage with {constraints.describe()}")
        print_answers(console, found, build_only, objective, f"Winners of sweep {result.sweep_id} ({parsed.name}) by {objective}, "
                      f"{constraints.describe()}", constraints.confident_margin, wide)
        code = sweep_exit_code(result.states)
        ended = {OK: "every job ok" if not result.rejected else "every job ok or judged", SOME_FAILED: "some jobs failed",
                 NOTHING: "no job succeeded"}[code]
        rejected = f", {result.rejected} rejected" if result.rejected else ""
        console.print(f"sweep {result.sweep_id}: {len(result.states)} jobs, {result.failed} failed{rejected} ({ended}); "
                      f"results in {store.location.url}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def redone_stages(force: bool, redo_from: str | None) -> frozenset[str]:
    from farm.run.stages import STAGES, stages_from

    if force and redo_from:
        raise fail("--force redoes every stage: give it or --redo-from, not both")
    if force:
        return frozenset(STAGES)
    try:
        return stages_from(redo_from) if redo_from else frozenset()
    except ValueError as exc:
        raise fail(f"--redo-from: {exc}") from None


def sweep_exit_code(states: dict[str, str]) -> int:
    """0: every job done or cached, or judged not viable (rejected, and what it would have fed skipped): a
    rejection is an answer, not a failure; 1: some failed (or were blocked by a failure); 3: not one succeeded."""
    if not any(state in ("done", "cached") for state in states.values()):
        return NOTHING
    return OK if all(state in ("done", "cached", "rejected", "skipped") for state in states.values()) else SOME_FAILED


@app.command()
def status(
    sweep_id: Annotated[int | None, typer.Argument(help="Sweep id; default the latest.")] = None,
    data_dir: DataDir = None,
    db_url: DbUrl = None,
    as_json: AsJson = False,
) -> None:
    """Show a sweep's progress per stage and its failures."""
    from farm.cli.terminal import Column, compact_table
    from farm.results import progress, queries

    console = fitted_console()

    with one_line_errors(as_json):
        store = results_store(data_dir, db_url)
        with store.session() as s:
            found = queries.sweep(s, sweep_id)
            if found is None:
                raise fail(f"no sweep {sweep_id if sweep_id is not None else 'recorded yet'}")
            by_stage = progress.stage_progress(s, found.id)
            failures = progress.failures(s, found.id)
            rejected = progress.failures(s, found.id, "rejected")
            loads = progress.node_loads(s, found.id)
            running = progress.running(s, found.id)
            waiting = progress.waiting(s, found.id)
        shown = progress.sweep_status(found.status, found.heartbeat_at, found.started_at, finished=found.finished_at)
        left_s = progress.remaining_seconds(found, by_stage, datetime.now(UTC)) if shown == "running" else None
    if as_json:
        print(json.dumps({"sweep": found.id, "name": found.name, "status": shown.split(" (")[0], "detail": shown,
                          "stored_status": found.status, "heartbeat_at": str(found.heartbeat_at) if found.heartbeat_at else None,
                          "reruns": found.reruns, "last_rerun_at": str(found.last_rerun_at) if found.last_rerun_at else None,
                          "stages": by_stage, "nodes": [asdict(n) for n in loads], "running": [asdict(r) for r in running],
                          "waiting": [asdict(w) for w in waiting],
                          "eta_s": left_s, "failures": [{"stage": f.stage, "job": f.label, "error": f.error} for f in failures],
                          "rejected": [{"stage": f.stage, "job": f.label, "reason": f.error} for f in rejected]},
                         default=str))
        return
    console.print(f"sweep {found.id} ({found.name}): {escape(shown)}, started {found.started_at:%Y-%m-%d %H:%M:%S}"
                  + ("" if left_s is None else f", about {timedelta(seconds=round(left_s))} left at this pace")
                  + (f", re-run {found.reruns}x from the store since (last {found.last_rerun_at:%Y-%m-%d %H:%M:%S})"
                     if found.reruns and found.last_rerun_at else ""), highlight=False)
    console.print(compact_table(["stage", *(Column(state, True) for state in progress.STATES)],
                                [[stage, *(str(states[state]) for state in progress.STATES)] for stage, states in by_stage.items()],
                                width=console.width))
    if loads:
        console.print(compact_table(["node", *(Column(state, True) for state in ("running", "done", "failed"))],
                                    [[escape(load.node), str(load.running), str(load.done), str(load.failed)] for load in loads],
                                    width=console.width))
    for job in running:
        since = "" if job.started is None else f" since {job.started:%H:%M:%S}"
        console.print(f"[cyan]running[/] {job.stage} {escape(job.label)} on {escape(job.node or '?')}{since}", highlight=False, soft_wrap=True)
    for held in waiting:  # pending, but not for a free node: another driver over this store runs it
        holder = "another driver" if held.held_by_sweep is None else f"sweep {held.held_by_sweep}"
        console.print(f"[cyan]waiting[/] {held.stage} {escape(held.label)}: {holder} runs it; this sweep uses its result "
                      f"(or runs it if that lease lapses, at {held.expires_at:%H:%M:%S} UTC unless renewed)", highlight=False, soft_wrap=True)
    for finding in rejected:  # judged not viable: an answer, not a failure
        console.print(f"[yellow]rejected[/] {finding.stage} {escape(finding.label)}: {escape(finding.error or '')}", highlight=False,
                      soft_wrap=True)
    for failure in failures:  # one line each, however long the error: soft_wrap keeps it unbroken
        console.print(f"[red]failed[/] {failure.stage} {escape(failure.label)}: {escape(failure.error or '')}", highlight=False, soft_wrap=True)


app.command()(answers.best)
app.command()(answers.cheapest)


@app.command()
def report(
    sweep_id: Annotated[int, typer.Argument(help="Sweep id (farm status lists the latest).")],
    format: Annotated[str, typer.Option("--format", help="csv, html or json.")] = "html",
    out_file: Annotated[Path | None, typer.Option("--out", help="File to write; default farm-sweep-ID.FORMAT here.")] = None,
    data_dir: DataDir = None,
    db_url: DbUrl = None,
) -> None:
    """Write one file a person can mail: the winners with verdicts, the noise, the failures, the environment."""
    from farm.results.delivery import writing
    from farm.results.report import render_report

    with one_line_errors():
        store = results_store(data_dir, db_url)
        with store.session() as s:
            text = render_report(s, sweep_id, format)  # ReportError: no such sweep or format, exit 2
        path = out_file or Path(f"farm-sweep-{sweep_id}.{format}")
        with writing(path):  # an OSError (a read-only folder, a full disk) is one line naming the file, exit 1
            path.write_text(text)
    out.print(f"report of sweep {sweep_id} in {path}", highlight=False, markup=False)


@app.command()
def doctor(as_json: AsJson = False) -> None:
    """What this machine offers: CPU, GPUs, and each backend's version (or how to install it)."""
    from farm.run.ray_token import token_source
    from workers.backends import BACKENDS
    from workers.device import NODE_IS_HOST, describe, node_is_host

    info = describe()
    ray_token = token_source(os.environ, Path.home())
    backends = [BACKENDS[name]().availability() for name in BACKENDS]
    if node_is_host():  # the switch of benchmarks/fleet_scaling.py: loud, so that nobody keeps it on a fleet
        warn(f"{NODE_IS_HOST}=1 (benchmark only): each Ray node started with it counts as a host of its own, so timings "
             "on one machine run at once; never set it on a real fleet")
    elif NODE_IS_HOST in os.environ:
        warn(f"{NODE_IS_HOST}={os.environ[NODE_IS_HOST]!r} is ignored: only 1 turns that benchmark-only switch on")
    if as_json:
        print(json.dumps({"device": asdict(info), "backends": [asdict(b) | {"ok": b.ok} for b in backends],
                          "targets": [t.id for t in info.targets()], "python": sys.version.split()[0],
                          "node_is_host": node_is_host(), "ray_token": ray_token}, default=str))
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
    console.print(f"ray token {escape(ray_token)}", highlight=False, soft_wrap=True)


@app.command()
def verify(
    repair: Annotated[bool, typer.Option("--repair", help="Delete corrupt and unreferenced artifact files, mark the jobs that "
                                                          "used a corrupt or missing one for redo (the next sweep rebuilds "
                                                          "them), upgrade an old schema. Results that are fine are kept.")] = False,
    data_dir: DataDir = None,
    db_url: DbUrl = None,
    as_json: AsJson = False,
) -> None:
    """Check the store (an fsck): every artifact's bytes against its sha256, rows without files, files without
    rows, the schema version and SQLite's integrity_check. One line per problem and exit 1, or one "ok" line."""
    from farm.store.verify import live_sweeps, repair_store, verify_store

    with one_line_errors(as_json):
        store = writable_store(data_dir, db_url) if repair else results_store(data_dir, db_url, current=False)
        found = verify_store(store)
        done: list[str] = []
        if repair and not found.ok:
            if live := live_sweeps(store):
                raise fail(f"sweep {live[0]} is running on this store: repair it once the sweep has ended "
                           "(a file being written now has no row yet)")
            done = repair_store(store, found).done
            found = verify_store(store)
    if as_json:
        print(json.dumps(found.as_json() | {"repaired": done}))
    else:
        for line in done:
            out.print(f"repaired {line}", highlight=False, soft_wrap=True, markup=False)
        for problem in found.problems:
            out.print(problem.line, highlight=False, soft_wrap=True, markup=False)
        if found.ok:
            out.print(found.summary, highlight=False, soft_wrap=True, markup=False)
    raise typer.Exit(OK if found.ok else SOME_FAILED)


APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"

def dashboard(
    host: Annotated[str, typer.Option(help="Address to listen on; loopback unless you mean to share it.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8501,
    data_dir: DataDir = None,
    db_url: DbUrl = None,
) -> None:
    """Open the results in a browser: sweeps, results, winners, engines (Streamlit, read-only)."""
    location = StoreLocation.resolve(data_dir, db_url)
    if host not in LOOPBACK:  # docs/security.md: the dashboard has no login, and its downloads are the engines
        warn(f"--host {host}: the dashboard has no authentication; anyone who can reach {host}:{port} can read every result "
             "and download every engine (prefer loopback and `ssh -L 8501:127.0.0.1:8501 host`)")
    env = os.environ | {"FARM_DATA_DIR": str(location.data_dir), "FARM_DB_URL": location.url}
    command = [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.headless=true", f"--server.address={host}", f"--server.port={port}",
        "--browser.gatherUsageStats=false", "--server.fileWatcherType=none", "--client.toolbarMode=viewer",
    ]
    err.print(f"farm dashboard on http://{host}:{port} reading {location.url}", highlight=False, markup=False, soft_wrap=True)
    # Become the Streamlit server (same pid), so stopping `farm dashboard` stops it.
    os.execvpe(command[0], command, env)


def pull(
    model: Annotated[str, typer.Argument(help="Model name, as in the sweep spec; or a build's key, or its first characters "
                                              "(the short key `farm best` prints), to pull that build.")],
    target: Annotated[str | None, typer.Option(help="Target id, or a unique part of one: 'NVIDIA H200', 'sm_89', 'cpu' "
                                                    "(required with a model name).")] = None,
    objective: ObjectiveOption = "p50",
    min_top1_agreement: FloorOption = 0.99,
    batch: Annotated[int | None, typer.Option(min=1, help="Batch size the winner is chosen at; default the smallest (largest for throughput).")] = None,
    precision: Annotated[str | None, typer.Option(help="Only builds of this precision (on a build-only target: the one you want).")] = None,
    rule: Annotated[str, typer.Option(help="On a build-only target (rtx:*) without --precision: timed-precision (the precision "
                                            "that won on the timed targets) or smallest.")] = "timed-precision",
    out_dir: Annotated[Path | None, typer.Option("--out", help="Folder for the engine and manifest.json; default ./<bundle name>.")] = None,
    data_dir: DataDir = None,
    db_url: DbUrl = None,
) -> None:
    """Write the winning engine of MODEL on a target and its manifest.json, checking the engine's sha256;
    or, given a build key (or its short key) and no --target, that build.

    On a build-only target (TensorRT-RTX ahead of time) nothing was timed: say --precision, or let
    --rule choose, and the rule used is printed."""
    from farm.results.delivery import load_engine, pick_build, pick_key, safe_folder, write_engine

    with one_line_errors():
        store = results_store(data_dir, db_url)
        with store.session() as s:
            if target is None:
                picked = pick_key(s, model)
            else:
                picked = pick_build(s, model, target, checked_objective(objective), min_top1_agreement, batch, precision, rule)
            record = load_engine(s, picked.build_key)
        # The default folder is named after the build's stored names: checked to be one folder here.
        where = out_dir or safe_folder(Path(), record.bundle_name, "bundle name", record.row)
        engine_path, manifest_path = write_engine(store, picked.build_key, where)
    out.print(picked.summary, highlight=False, soft_wrap=True, markup=False)
    out.print(f"chosen    {picked.rule}", highlight=False, soft_wrap=True, markup=False)
    out.print(f"engine    {engine_path} (sha256 {record.engine_sha256} verified)", highlight=False, soft_wrap=True, markup=False)
    out.print(f"manifest  {manifest_path}", highlight=False, soft_wrap=True, markup=False)
    extra = record.extra
    if extra.get("how_to_load"):  # a PyTorch engine: a package or a recipe, and how to run it
        out.print(f"load      {extra['how_to_load']}", highlight=False, soft_wrap=True, markup=False)
    if str(extra.get("reproducible", "")).startswith("in-process only"):
        out.print("note      this winner is a recipe (model source + weights + options), not a compiled artifact: "
                  "it compiles again where it runs", highlight=False, soft_wrap=True, markup=False)


def export_triton(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder of the Triton model repository (created).")],
    objective: ObjectiveOption = "p50",
    min_top1_agreement: FloorOption = 0.99,
    batch: Annotated[int | None, typer.Option(min=1, help="Batch size winners are chosen at; default the smallest (largest for throughput).")] = None,
    data_dir: DataDir = None,
    db_url: DbUrl = None,
) -> None:
    """Write a Triton model repository: per model, the winning TensorRT engine of every GPU (cc_model_filenames)."""
    from farm.results.delivery import triton_repository

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
            raise fail("no model could be exported (see the notes above)", NOTHING)
    out.print(f"Triton model repository in {out_dir}", highlight=False, markup=False)


app.command()(dashboard)
app.command()(pull)
app.command()(history.diff)
app.add_typer(history.baseline_app, name="baseline")
deliver = typer.Typer(no_args_is_help=True, help="Write winners in a serving format.")
deliver.command("triton")(export_triton)
app.add_typer(deliver, name="deliver")
# The first name of `farm deliver`: kept so that scripts written for it still run.
app.add_typer(deliver, name="export", hidden=True)

if __name__ == "__main__":
    app()
