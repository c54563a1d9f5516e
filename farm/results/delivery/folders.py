"""The folders a delivery writes into: --out prepared (or refused when it is a file), and a model
name accepted only as one plain folder name under it."""

from __future__ import annotations

import re
from pathlib import Path

from farm.results.delivery.errors import ExportError, writing


MAX_NAME = 200  # characters of a folder name here: farm.run.spec allows model names of 100, plus suffixes like _onnxruntime


def safe_folder(root: Path, name: str) -> Path:
    """`root / name`, refused unless `name` is one plain folder name: ".", "..", a separator or an
    overlong name (a store written before farm.run.spec checked names) would write, or rmtree, elsewhere."""
    plain = name not in ("", ".", "..") and not re.search(r"[/\\\x00]", name) and len(name) <= MAX_NAME
    folder = root / name
    if not plain or folder.resolve().parent != root.resolve():
        shown = name if len(name) <= 40 else name[:37] + "..."
        raise ExportError(f"model name {shown!r} cannot be a folder name under {root}: refused", 2)
    return folder


def prepared_out(out_dir: Path) -> Path:
    """--out as a folder to write into: created, or refused with one line when it is a file."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"--out {out_dir}: is a file, not a folder", 2)
    with writing(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir
