"""What every `farm` command shares: store options, exit codes, one-line errors (usage errors included),
the objective check, stdout and stderr."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, cast

import typer
from rich.console import Console
from rich.markup import escape
from sqlalchemy.exc import DBAPIError
from typer.core import TyperGroup

from farm.results.metrics import OBJECTIVES, Objective
from farm.results.prices import Prices, PricesError
from farm.store import Store, StoreLocation, open_store
from farm.store.db import STORE_ATTRIBUTE, FailedAt, farm_tables, has_schema, head_revision, make_engine, schema_revision, shown_url, store_name
from farm.store.record import close_abandoned, plain

if TYPE_CHECKING:
    from farm.results.constraints import Constraints

# Exit codes a script can trust (README, `farm --help`).
OK = 0  # everything asked for was done: every job of the sweep ended done or cached
SOME_FAILED = 1  # the work ran and part of it failed: some jobs of the sweep, a delivery or a write half done
BAD_INPUT = 2  # bad input or usage, or a store or cluster that cannot be used: nothing ran
NOTHING = 3  # nothing came of it: every job of the sweep failed, or no build is eligible
INTERRUPTED = 130  # Ctrl-C or SIGTERM: finished results are kept, the same sweep resumes
EXIT_CODES = (f"Exit codes: {OK} every job ok; {SOME_FAILED} some jobs failed (the sweep finished) or a delivery failed "
              f"part way; {BAD_INPUT} bad input or usage, nothing ran; {NOTHING} every job failed, or nothing eligible; "
              f"{INTERRUPTED} interrupted. Errors are one line on stderr; with --json, {{\"error\": ...}} on stdout.")

DataDir = Annotated[Path | None, typer.Option("--data-dir", envvar="FARM_DATA_DIR", help="Where farm.db and artifacts/ live.")]
DbUrl = Annotated[str | None, typer.Option("--db-url", envvar="FARM_DB_URL", help="SQLAlchemy URL; default SQLite in the data dir.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table (errors too: {\"error\": ...} on stdout).")]
ObjectiveOption = Annotated[str, typer.Option(help="p50, p99 (latency), throughput, or cost (USD per million inferences at the target's price).")]
PricesOption = Annotated[Path | None, typer.Option("--prices", help="A prices YAML ({gpu: {H100: 3.0}, cpu_core_hour: 0.04}) over the "
                                                   "sweep's prices: and farm's defaults (docs/cost.md).")]
MinCosineOption = Annotated[float | None, typer.Option(min=-1.0, max=1.0, help="Fidelity constraint: mean cosine similarity with fp32, -1..1.")]
MaxAccuracyDropOption = Annotated[float | None, typer.Option(min=0.0, max=1.0, help="Fidelity constraint: labelled top-1 accuracy below fp32's, 0..1.")]
Wide = Annotated[bool, typer.Option("--wide", help="Engine labels with every option (by default only those that differ "
                                                   "between the builds a table shows, and not at their defaults).")]
SweepOption = Annotated[int | None, typer.Option("--sweep", help="Only results of this sweep.")]
FloorOption = Annotated[float, typer.Option(min=0.0, max=1.0, help="Fidelity floor: top-1 agreement with fp32, 0..1.")]
EligibilityOption = Annotated[str, typer.Option(help="How the floor is read: evidence (no confident flips, Wilson upper bound "
                                                     "or fp32's own noise floor; docs/verdicts.md) or threshold (the bare share).")]
MarginOption = Annotated[float, typer.Option(min=0.0, max=1.0, help="A flip where fp32's softmax margin p1-p2 is at least this is confident.")]

MIN_WIDTH = 100  # tables are laid out for at least this many columns (narrower terminals wrap them)
LOG_WIDTH = 200  # no terminal and no COLUMNS (logs of `ray job submit`, CI): lines a log keeps whole


def terminal_width(environ: Mapping[str, str] | None = None) -> int:
    """The width tables are laid out for: COLUMNS where set (Rich reads it only in some cases), else the
    terminal's, else LOG_WIDTH; never below MIN_WIDTH."""
    columns = (os.environ if environ is None else environ).get("COLUMNS", "").strip()
    if columns.isdigit():
        return max(int(columns), MIN_WIDTH)
    if sys.stdout.isatty():
        return max(shutil.get_terminal_size().columns, MIN_WIDTH)
    return LOG_WIDTH


def fitted_console() -> Console:
    """A console on stdout at terminal_width(), made when a command runs (COLUMNS is read then, not at import)."""
    return Console(width=terminal_width())


out = fitted_console()
err = Console(stderr=True)


class UserError(Exception):
    """A failure the user can fix, shown as one line; `code` is the exit status."""

    def __init__(self, message: str, code: int = BAD_INPUT) -> None:
        super().__init__(message)
        self.code = code


def fail(message: str, code: int = BAD_INPUT) -> UserError:
    """The error to raise inside `one_line_errors` (which prints it as text or as JSON)."""
    return UserError(message, code)


def _flat(message: str) -> str:
    """One line, without terminal codes (Ray's exceptions carry colour codes in their text)."""
    return " ".join((plain(str(message)) or "").split())


def print_error(message: str, as_json: bool = False) -> None:
    """One line per problem: `error: ...` on stderr, or {"error": ..., "errors": [...]} on stdout for --json.

    A message holds several problems only where they are independent (a spec's fields), so each is
    its own line and the user fixes them all at once."""
    problems = [_flat(line) for line in message.splitlines() if line.strip()] or [_flat(message)]
    if as_json:
        print(json.dumps({"error": problems[0], **({"errors": problems} if len(problems) > 1 else {})}))
    else:
        for problem in problems:
            err.print(f"[red]error:[/] {escape(problem)}", highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(_flat(message))}", highlight=False, soft_wrap=True)


def _store_error(exc: DBAPIError) -> tuple[str, int]:
    """A database error as one line and its exit code: a write that failed part way is SOME_FAILED,
    a store that cannot be opened or read is BAD_INPUT (nothing ran)."""
    message = store_failure(exc)
    return message, SOME_FAILED if message.startswith("cannot write") else BAD_INPUT


WRITES = ("INSERT", "UPDATE", "DELETE", "CREATE", "ALTER", "DROP")


def store_failure(exc: DBAPIError) -> str:
    """One line on what the database refused, in the right words: opening it, writing to it, or reading it."""
    reason = " ".join(str(exc.orig).split())  # PostgreSQL's messages run over several lines
    # farm.store.db names the database on every error of its engines: which file is malformed or full
    failed: FailedAt | None = getattr(exc, STORE_ATTRIBUTE, None)
    where = f" {failed.store}" if failed else ""
    if exc.statement is None:
        if failed is not None and failed.connected:  # a COMMIT: what failed was a write
            return f"cannot write to the store{where}: {reason}"
        return f"cannot open the store{where}: {reason}"  # a server down, a wrong host or password
    words = exc.statement.split(None, 1)
    return f"cannot {'write to' if words and words[0].upper() in WRITES else 'read'} the store{where}: {reason}"


@contextmanager
def one_line_errors(as_json: bool = False) -> Iterator[None]:
    """Known failures end the command with one line and their exit code; a bug still shows its traceback."""
    from ray.exceptions import RayError
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    from farm.run.cluster import ClusterError
    from farm.results.delivery import ExportError
    from farm.results.report import ReportError
    from farm.run.spec import SpecError
    from farm.store.db import StoreError
    from workers.calibration import CalibrationDataError

    def end(message: str, code: int) -> typer.Exit:
        print_error(message, as_json)
        return typer.Exit(code)

    try:
        yield
    except UserError as exc:
        raise end(str(exc), exc.code) from None
    except (SpecError, ClusterError, CalibrationDataError, ReportError, StoreError) as exc:
        raise end(str(exc), BAD_INPUT) from None
    except ExportError as exc:
        raise end(str(exc), exc.code) from None
    except DBAPIError as exc:  # unreachable, not a database, locked, full, read-only
        raise end(*_store_error(exc)) from None
    except (ArgumentError, NoSuchModuleError) as exc:  # a --db-url SQLAlchemy cannot parse or has no driver for
        raise end(f"--db-url: {exc}", BAD_INPUT) from None
    except (ConnectionError, RayError) as exc:  # the Ray cluster: not there, or refusing us (auth)
        message = _flat(str(exc))
        if "auth" in message.lower():  # Ray's advice runs to five sentences: the first, and where farm documents tokens
            message = message.split(". ")[0].rstrip(".") + " (set RAY_AUTH_TOKEN or ~/.ray/auth_token: README, On a cluster)"
        elif isinstance(exc, ConnectionError):  # a wrong token looks like this too: Ray retries, then gives up without saying why
            message += " (a cluster with token authentication refuses a wrong RAY_AUTH_TOKEN this way: README, On a cluster)"
        raise end(f"Ray cluster: {message}", BAD_INPUT) from None
    except FileNotFoundError as exc:
        raise end(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "), BAD_INPUT) from None
    except OSError as exc:  # a write that failed: a full disk, a read-only medium, a path under a file
        raise end(f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}", SOME_FAILED) from None
    except KeyboardInterrupt:
        err.print("interrupted: finished results are kept; run the same sweep again to resume")
        raise typer.Exit(INTERRUPTED) from None


def check_address(address: str | None, timeout_s: float = 5.0) -> None:
    """Refuse a Ray address that is malformed or where nothing listens, in one line and at once: Ray
    itself retries an unreachable address for minutes, and a malformed one is a ValueError traceback."""
    given = address or os.environ.get("RAY_ADDRESS")
    if not given or given in ("auto", "local"):
        return
    name = "--address" if address else "RAY_ADDRESS"
    host, sep, port = given.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"{name} {given}: expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise UserError(f"{name} {given}: no Ray cluster answers there ({exc.strerror or exc})") from None


def checked_prices(path: Path | None) -> Prices | None:
    """--prices FILE read, or one line naming the file and the field at fault."""
    if path is None:
        return None
    try:
        return Prices.from_file(path)
    except PricesError as error:
        raise fail(str(error)) from None


def checked_constraints(min_top1_agreement: float | None, min_cosine: float | None, max_accuracy_drop: float | None,
                        eligibility: str, confident_margin: float) -> Constraints:
    from farm.results.constraints import Constraints
    from farm.results.evidence import RULES

    if eligibility not in RULES:
        raise fail(f"--eligibility {eligibility!r}: expected one of {', '.join(RULES)}")
    return Constraints(min_top1_agreement, min_cosine, max_accuracy_drop, eligibility, confident_margin)  # type: ignore[arg-type]


def checked_objective(objective: str) -> Objective:
    if objective not in OBJECTIVES:
        raise fail(f"--objective {objective!r}: expected one of {', '.join(OBJECTIVES)}")
    return cast(Objective, objective)


def results_store(data_dir: Path | None, db_url: str | None, *, current: bool = True) -> Store:
    """The store, read-only, or one line saying there are no results yet; with `current`, also one line
    when its schema is not this farm's (an older farm's, or a creation cut off half way)."""
    location = StoreLocation.resolve(data_dir, db_url)
    if location.url.startswith("sqlite:///"):
        path = Path(location.url.removeprefix("sqlite:///"))
        if path.is_dir():
            raise UserError(f"{location.url}: {path} is a directory, not a database")
        if not path.exists():
            raise UserError(f"no results yet: {location.url} does not exist (run `farm sweep SPEC` first)")
    store = open_store(location, readonly=True)
    if not has_schema(store.engine) and not farm_tables(store.engine):  # a database server's new, empty database
        store.close()
        raise UserError(f"no results yet: {shown_url(location.url)} has no farm tables (run `farm sweep SPEC` first)")
    revision, head = schema_revision(store.engine), head_revision()
    if current and revision != head:
        store.close()  # read-only commands never migrate: the queries would fail on a missing column or table
        found = f"at revision {revision}" if revision else "half-made (no alembic_version row: its creation was cut off)"
        raise UserError(f"{store_name(location.url)}: the store's schema is {found}, this farm's is {head}: "
                        "`farm verify --repair` mends it")
    if revision == head:
        _close_abandoned(location.url)
    return store


def _close_abandoned(url: str) -> None:
    """A read command stores what it finds too: sweeps whose driver is gone become "interrupted". Where the
    store cannot be written (a read-only medium, a read-only role), it still reads them as interrupted."""
    engine = make_engine(url)
    try:
        close_abandoned(engine)
    except DBAPIError:
        pass
    finally:
        engine.dispose()


def writable_store(data_dir: Path | None, db_url: str | None) -> Store:
    store = open_store(StoreLocation.resolve(data_dir, db_url))
    close_abandoned(store.engine)
    return store


class WarningLines(logging.Handler):
    """Warnings of farm's data loaders (a skipped, truncated photo) as one `warning:` line each, once."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message not in self.seen:
            self.seen.add(message)
            warn(message)


@contextmanager
def data_warnings() -> Iterator[WarningLines]:
    """Show what workers.calibration skips while the block runs (the driver loads the rows)."""
    logger = logging.getLogger("workers.calibration")
    handler = WarningLines()
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


class OneLineGroup(TyperGroup):
    """The `farm` command group: a usage error (an unknown option, a value out of range, a missing
    argument) is one line on stderr with exit 2, not Click's framed box; with --json it is JSON on stdout."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        if not standalone_mode:
            return super().main(argv, prog_name, complete_var, False, windows_expand_args, **extra)
        try:
            code = super().main(argv, prog_name, complete_var, False, windows_expand_args, **extra)
        except Exception as exc:
            # Click's exceptions (Typer vendors its own copy of Click, so they are matched by class name)
            kinds = {kind.__name__ for kind in type(exc).__mro__}
            if "NoArgsIsHelpError" in kinds:
                print(exc.ctx.get_help())  # type: ignore[attr-defined]
                sys.exit(BAD_INPUT)
            if "UsageError" in kinds:
                _usage_error(exc, "--json" in argv)
            if "ClickException" in kinds:
                print_error(exc.format_message(), "--json" in argv)  # type: ignore[attr-defined]
                sys.exit(exc.exit_code)  # type: ignore[attr-defined]
            if "Abort" in kinds:
                err.print("interrupted")
                sys.exit(INTERRUPTED)
            raise
        sys.exit(code if isinstance(code, int) else OK)


def _usage_error(exc: Any, as_json: bool) -> NoReturn:
    command = exc.ctx.command_path if getattr(exc, "ctx", None) is not None else "farm"
    print_error(f"{command}: {exc.format_message()} (see {command} --help)", as_json)
    sys.exit(BAD_INPUT)
