"""Real small file systems for tests of a full disk and a read-only medium: a tmpfs mounted over a folder
(root can mount, in CI as here). Where mounting is refused the test skips, saying why; under CI it fails
instead, so a runner without the right to mount cannot hide these tests."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def tmpfs(folder: Path, size: str = "128k", read_only: bool = False) -> Iterator[Path]:
    """A fresh tmpfs of `size` mounted on `folder` (made if missing), read-only if asked; unmounted after."""
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        reason = f"cannot mount a tmpfs on {folder} ({mounted.stderr.strip() or f'exit {mounted.returncode}'}): this test needs root"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", str(folder)], check=True)  # a file left open: detached now, freed when closed
