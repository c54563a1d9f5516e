"""What every `farm` command shares: store options, one-line errors, the objective check, stdout and stderr."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, cast

import typer
from rich.console import Console
from rich.markup import escape

from farm.select import OBJECTIVES, Objective
from farm.store import Store, StoreLocation, open_store

DataDir = Annotated[Path | None, typer.Option("--data-dir", envvar="FARM_DATA_DIR", help="Where farm.db and artifacts/ live.")]
DbUrl = Annotated[str | None, typer.Option("--db-url", envvar="FARM_DB_URL", help="SQLAlchemy URL; default SQLite in the data dir.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ObjectiveOption = Annotated[str, typer.Option(help="p50, p99 (latency) or throughput.")]
FloorOption = Annotated[float, typer.Option(help="Fidelity floor: top-1 agreement with fp32.")]

out = Console()
if not out.is_terminal:  # logs of `ray job submit` and CI: wide enough for the winners table
    out = Console(width=200)
err = Console(stderr=True)


class UserError(Exception):
    """A failure the user can fix; shown as one line."""


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Known failures end the command with one line; a bug still shows its traceback."""
    from sqlalchemy.exc import OperationalError

    from farm.cluster import ClusterError
    from farm.delivery import ExportError
    from farm.spec import SpecError
    from workers.calibration import CalibrationDataError

    try:
        yield
    except (SpecError, ClusterError, CalibrationDataError, FileNotFoundError, UserError) as exc:
        raise fail(str(exc)) from None
    except ExportError as exc:
        raise fail(str(exc), 1) from None
    except OperationalError as exc:  # an unreachable database, or one no sweep has created the tables of
        raise fail(f"cannot read the store: {exc.orig}", 1) from None
    except KeyboardInterrupt:
        err.print("interrupted: finished results are kept; run the same sweep again to resume")
        raise typer.Exit(130) from None


def checked_objective(objective: str) -> Objective:
    if objective not in OBJECTIVES:
        raise fail(f"--objective {objective!r}: expected one of {', '.join(OBJECTIVES)}")
    return cast(Objective, objective)


def results_store(data_dir: Path | None, db_url: str | None) -> Store:
    """The store, read-only, or one line saying there are no results yet."""
    location = StoreLocation.resolve(data_dir, db_url)
    if location.url.startswith("sqlite:///") and not Path(location.url.removeprefix("sqlite:///")).exists():
        raise UserError(f"no results yet: {location.url} does not exist (run `farm sweep SPEC` first)")
    return open_store(location, readonly=True)


def writable_store(data_dir: Path | None, db_url: str | None) -> Store:
    return open_store(StoreLocation.resolve(data_dir, db_url))
