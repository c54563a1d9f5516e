"""`farm dashboard`, `farm pull` and `farm export triton`: the commands that hand results to people and servers.

farm.cli calls `register(app)`; this module does not import farm.cli, so either can be
imported first.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from farm.cli_common import DataDir, DbUrl, FloorOption, ObjectiveOption, checked_objective, err, fail, one_line_errors, out, results_store
from farm.store import StoreLocation

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
    out_dir: Annotated[Path | None, typer.Option("--out", help="Folder for the engine and manifest.json; default ./<bundle name>.")] = None,
    data_dir: DataDir = None,
    db_url: DbUrl = None,
) -> None:
    """Write the winning engine of MODEL on a target and its manifest.json, checking the engine's sha256."""
    from farm.export import load_engine, pick_winner, write_engine

    with one_line_errors():
        store = results_store(data_dir, db_url)
        with store.session() as s:
            winner = pick_winner(s, model, target, checked_objective(objective), min_top1_agreement, batch)
            record = load_engine(s, winner.build_key)
        engine_path, manifest_path = write_engine(store, winner.build_key, out_dir or Path(record.bundle_name))
    out.print(f"{winner.label}: batch {winner.batch_size}, p50 {winner.p50_ms:.3f} ms, p99 {winner.p99_ms:.3f} ms, "
              f"{winner.throughput:.1f} samples/s, top-1 agreement {winner.top1_agreement}", highlight=False, soft_wrap=True, markup=False)
    out.print(f"engine    {engine_path} (sha256 {record.engine_sha256} verified)", highlight=False, soft_wrap=True, markup=False)
    out.print(f"manifest  {manifest_path}", highlight=False, soft_wrap=True, markup=False)


def export_triton(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder of the Triton model repository (created).")],
    objective: ObjectiveOption = "p50",
    min_top1_agreement: FloorOption = 0.99,
    batch: Annotated[int | None, typer.Option(help="Batch size winners are chosen at; default the smallest (largest for throughput).")] = None,
    data_dir: DataDir = None,
    db_url: DbUrl = None,
) -> None:
    """Write a Triton model repository: per model, the winning TensorRT engine of every GPU (cc_model_filenames)."""
    from farm.export import triton_repository

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


def register(app: typer.Typer) -> None:
    app.command()(dashboard)
    app.command()(pull)
    export = typer.Typer(no_args_is_help=True, help="Write winners in a serving format.")
    export.command("triton")(export_triton)
    app.add_typer(export, name="export")
