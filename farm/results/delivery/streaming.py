"""Engines out of the store, verified while they stream: a bundle (ZIP of engine + manifest.json), the
bare engine, or both written into a folder. The sha256 is checked as the bytes go by, so a corrupt or
missing artifact is an ExportError, and a file on disk is only renamed into place once it checked out."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from farm.results.delivery.engines import bundle_manifest, load_engine
from farm.results.delivery.errors import ExportError, writing
from farm.results.delivery.folders import prepared_out, removed_on_failure
from farm.store import Store


CHUNK = 1 << 20
REPAIR = " (`farm verify --repair` marks its build for redo; the next sweep rebuilds it)"


def artifact_problem(sha256: str, state: str, detail: str = "") -> str:
    """The line for an engine artifact that is missing or corrupt, naming its file where `detail` does, with the
    command that mends the store: the same words in `farm pull`, `farm deliver` and the dashboard."""
    return f"engine artifact {sha256} is {state}{detail}{REPAIR}"


def _verified_chunks(store: Store, sha256: str) -> Iterator[bytes]:
    """The artifact's bytes in chunks; raises ExportError at the end if they do not hash to sha256."""
    path = store.artifacts.path(sha256)
    digest = hashlib.sha256()
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise ExportError(artifact_problem(sha256, "missing", f": no file {path}")) from None
    with handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
            yield block
    if digest.hexdigest() != sha256:
        raise ExportError(artifact_problem(sha256, "corrupt", f": {path} hashes to {digest.hexdigest()[:12]}..., not to its name"))


def _copy_verified(store: Store, sha256: str, out: IO[bytes]) -> None:
    for block in _verified_chunks(store, sha256):
        out.write(block)


def engine_bundle(store: Store, build_key: str) -> bytes:
    """A ZIP of `<bundle_name>/engine.<ext>` and `<bundle_name>/manifest.json`, checked against sha256.

    Called only when someone downloads (st.download_button's callable), so an engine is read
    from disk on demand instead of being held in the server's memory on every rerun.
    """
    with store.session() as s:
        record = load_engine(s, build_key)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        # Engines hardly compress; storing them keeps a download as fast as a disk read.
        info = zipfile.ZipInfo(f"{record.bundle_name}/{record.engine_file}")
        info.compress_type = zipfile.ZIP_STORED
        with archive.open(info, "w", force_zip64=(record.engine_bytes or 0) >= 2**31) as entry:
            _copy_verified(store, record.sha256, entry)
        archive.writestr(f"{record.bundle_name}/manifest.json", json.dumps(bundle_manifest(record), indent=2),
                         compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def engine_bytes(store: Store, build_key: str) -> bytes:
    """The bare engine file, checked against its sha256."""
    with store.session() as s:
        record = load_engine(s, build_key)
    return b"".join(_verified_chunks(store, record.sha256))


def write_verified(store: Store, sha256: str, destination: Path) -> None:
    """The artifact at `destination`, through a temporary file beside it that is renamed into place only
    once its bytes hashed to sha256: a failed check leaves no partial engine behind."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=destination.parent, prefix=".partial-", delete=False) as tmp:
        try:
            _copy_verified(store, sha256, tmp)
        except BaseException:
            tmp.close()
            os.unlink(tmp.name)
            raise
    os.chmod(tmp.name, 0o644)  # temporary files are private; a delivered engine is an ordinary file
    os.replace(tmp.name, destination)


def write_engine(store: Store, build_key: str, out_dir: Path) -> tuple[Path, Path]:
    """Write the engine file and manifest.json into out_dir (the bundle's layout, unzipped)."""
    with store.session() as s:
        record = load_engine(s, build_key)
    engine_path = out_dir / record.engine_file
    manifest_path = out_dir / "manifest.json"
    with removed_on_failure(out_dir), writing(out_dir):
        prepared_out(out_dir)
        write_verified(store, record.sha256, engine_path)
        manifest_path.write_text(json.dumps(bundle_manifest(record), indent=2) + "\n")
    return engine_path, manifest_path
