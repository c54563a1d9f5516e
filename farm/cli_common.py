"""What every `farm` command shares: store options, one-line errors, the objective check, stdout and stderr."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, cast

import typer
from rich.console import Console
from rich.markup import escape
from sqlalchemy.exc import DBAPIError

from farm.select import OBJECTIVES, Objective
from farm.store import Store, StoreLocation, open_store
from farm.store.db import has_schema, shown_url

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


WRITES = ("INSERT", "UPDATE", "DELETE", "CREATE", "ALTER", "DROP")


def store_failure(exc: DBAPIError) -> str:
    """One line on what the database refused, in the right words: opening it, writing to it, or reading it."""
    reason = " ".join(str(exc.orig).split())  # PostgreSQL's messages run over several lines
    if exc.statement is None:  # the connection itself failed: a server down, a wrong host or password
        return f"cannot open the store: {reason}"
    words = exc.statement.split(None, 1)
    return f"cannot {'write to' if words and words[0].upper() in WRITES else 'read'} the store: {reason}"


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Known failures end the command with one line; a bug still shows its traceback."""
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from farm.cluster import ClusterError
    from farm.delivery import ExportError
    from farm.spec import SpecError
    from farm.store.db import StoreError
    from workers.calibration import CalibrationDataError

    try:
        yield
    except (SpecError, ClusterError, CalibrationDataError, FileNotFoundError, UserError, StoreError) as exc:
        raise fail(str(exc)) from None
    except ExportError as exc:
        raise fail(str(exc), 1) from None
    # An unreachable database, one no sweep has created the tables of (SQLite: OperationalError;
    # PostgreSQL: ProgrammingError, undefined table), a write the medium refuses.
    except (OperationalError, ProgrammingError) as exc:
        raise fail(store_failure(exc), 1) from None
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
    store = open_store(location, readonly=True)
    if not has_schema(store.engine):  # a database server's new, empty database
        store.close()
        raise UserError(f"no results yet: {shown_url(location.url)} has no farm tables (run `farm sweep SPEC` first)")
    return store


def writable_store(data_dir: Path | None, db_url: str | None) -> Store:
    return open_store(StoreLocation.resolve(data_dir, db_url))
