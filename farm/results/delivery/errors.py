"""Why a delivery could not be made, as one line and an exit status: ExportError, and `writing`,
which turns an OSError under an output path into one."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class ExportError(Exception):
    """A delivery that cannot be made; the message is one line for the terminal or the page.

    `code` is the CLI's exit status (farm.cli.common): 2 for a request that names nothing (an
    unknown model, target or batch size, an --out that is a file), 3 when nothing is eligible,
    1 when the delivery failed part way (a corrupt artifact, a write that failed)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """An OSError while writing under `path` (a read-only medium, a full disk, a path under a file,
    a name too long) becomes one line naming the path."""
    try:
        yield
    except ExportError:
        raise
    except OSError as exc:
        where = exc.filename or path
        raise ExportError(f"{where}: cannot write ({exc.strerror or exc})", 1) from None
