"""The paths a delivery writes: --out prepared (or refused when it is a file); every name read from the
store (a model name, a backend, a precision, a compute capability) accepted only as one plain name under
its folder; and folders that are complete or absent, never left half-made or empty by a failed delivery."""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from farm.results.delivery.errors import ExportError, writing


MAX_NAME = 200  # characters of a folder name here: farm.run.spec allows model names of 100, plus suffixes like _onnxruntime
STAGING = ".partial-"  # the prefix of a folder being written, renamed into place once it is complete


def plain_name(name: str, stored: str = "model name", row: str | None = None) -> str:
    """`name` itself, refused unless it is one plain file or folder name: "", ".", "..", a separator, a NUL
    or an overlong name (a store written before farm.run.spec checked names, or edited by hand) would
    write, zip or rmtree elsewhere. `stored` says which stored name it is and `row` where it was read."""
    if name in ("", ".", "..") or re.search(r"[/\\\x00]", name) or len(name) > MAX_NAME:
        shown = name if len(name) <= 40 else name[:37] + "..."
        raise ExportError(f"{stored} {shown!r}{f' of {row}' if row else ''} cannot be a file or folder name: refused", 2)
    return name


def safe_folder(root: Path, name: str, stored: str = "model name", row: str | None = None) -> Path:
    """`root / name`, once plain_name accepted `name` and the path resolves to a child of `root` (so a
    symlink planted under --out leads nowhere else either)."""
    folder = root / plain_name(name, stored, row)
    if folder.resolve().parent != root.resolve():
        raise ExportError(f"{stored} {name!r}{f' of {row}' if row else ''}: {folder} leads outside {root}: refused", 2)
    return folder


def prepared_out(out_dir: Path) -> Path:
    """--out as a folder to write into: created, or refused with one line when it is a file."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"--out {out_dir}: is a file, not a folder", 2)
    with writing(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


@contextlib.contextmanager
def removed_on_failure(out_dir: Path) -> Iterator[Path]:
    """--out for a delivery that may fail part way: the folders it had to create for --out are removed
    again when the delivery raises, or when it wrote nothing (every model refused), so a refused name
    or a corrupt engine leaves no empty folder behind."""
    missing = out_dir.absolute()
    while not missing.parent.exists() and missing.parent != missing:
        missing = missing.parent
    made = not missing.exists()
    try:
        yield out_dir
    except BaseException:
        if made:
            shutil.rmtree(missing, ignore_errors=True)
        raise
    if made and out_dir.is_dir() and not any(out_dir.iterdir()):
        shutil.rmtree(missing, ignore_errors=True)


@contextlib.contextmanager
def staged(folder: Path) -> Iterator[Path]:
    """A temporary folder beside `folder` to write its contents into; it replaces `folder` only once the
    block finished, and is removed when the block raises, so `folder` is whole, old or absent."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f"{STAGING}{folder.name[:40]}-"))
    try:
        yield stage
        stage.chmod(0o755)  # mkdtemp's folders are private; a delivered one is an ordinary folder
        if folder.exists():
            shutil.rmtree(folder)
        stage.replace(folder)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
