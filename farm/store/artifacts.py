"""Content-addressed files: each artifact lives at `<root>/<sha[:2]>/<sha>`, written once (again only if its bytes went bad)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path


PARTIAL = ".partial-"  # the prefix of an artifact being written


class ArtifactMissing(FileNotFoundError):
    pass


@dataclass(frozen=True)
class ArtifactStore:
    root: Path

    def relative_path(self, sha256: str) -> str:
        return f"{sha256[:2]}/{sha256}"

    def path(self, sha256: str) -> Path:
        return self.root / self.relative_path(sha256)

    def put(self, data: bytes) -> str:
        """Store `data` and return its sha256; storing the same bytes twice costs a read.

        A file already at the path is hashed first: one whose bytes went bad (a disk, a hand) is
        replaced, so a job redone after `farm verify` finds it mends the store instead of skipping it.
        """
        sha = hashlib.sha256(data).hexdigest()
        target = self.path(sha)
        if target.is_file() and self._intact(sha):
            return sha
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            self._write(target, data)
        except OSError as exc:
            if exc.filename is None:  # a write's ENOSPC names no file: say which one could not be written
                raise OSError(exc.errno, exc.strerror, os.fspath(target)) from None
            raise
        return sha

    def _intact(self, sha256: str) -> bool:
        try:
            return self.verify(sha256)
        except OSError:
            return False

    @staticmethod
    def _write(target: Path, data: bytes) -> None:
        # Write beside the target and rename, so a reader never sees half a file; a write that
        # fails (a full disk) removes its temporary file instead of leaving it in the store.
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=PARTIAL, delete=False) as tmp:
            try:
                tmp.write(data)
                tmp.flush()
            except BaseException:
                with contextlib.suppress(OSError):  # closing flushes again, and fails again on a full disk
                    tmp.close()
                os.unlink(tmp.name)
                raise
        os.replace(tmp.name, target)

    def partials(self) -> list[Path]:
        """Temporary files of writes that never finished (a writer killed mid-write): none after a clean run."""
        return sorted(self.root.glob(f"*/{PARTIAL}*")) if self.root.exists() else []

    def get(self, sha256: str) -> bytes:
        try:
            return self.path(sha256).read_bytes()
        except FileNotFoundError:
            raise ArtifactMissing(f"artifact {sha256} is not in {self.root}") from None

    def verify(self, sha256: str) -> bool:
        digest = hashlib.sha256()
        with self.path(sha256).open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest() == sha256
