"""A throwaway PostgreSQL server for the tests: Debian's `postgresql` binaries, a fresh cluster in a
temporary folder, listening on a free loopback port, stopped and deleted at the end of the session.

PostgreSQL refuses to run as root, so under root (CI, this project's machines) the cluster belongs
to the `postgres` system user that Debian's package creates, and every server command runs through
`runuser -u postgres --`. Missing binaries fail the tests that need them with how to install them:
a skip would hide a CI without PostgreSQL.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

INSTALL = "install Debian's postgresql package (apt-get install -y postgresql; scripts/bootstrap.sh dev does it as root)"
SUPERUSER = "farm"


class PostgresUnavailable(Exception):
    """The server cannot be started here; the message says how to fix it."""


def binaries() -> Path:
    """The folder of initdb and pg_ctl: Debian keeps them under /usr/lib/postgresql/VERSION/bin, off PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent  # the newest version installed
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    raise PostgresUnavailable(f"PostgreSQL server binaries (initdb, pg_ctl) not found: {INSTALL}")


def _owner() -> list[str]:
    """The command prefix that runs a server command as a user PostgreSQL accepts."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresUnavailable(f"running as root needs the 'postgres' system user to own the server: {INSTALL}") from None
    return ["runuser", "-u", "postgres", "--"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class PostgresServer:
    port: int

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _admin(self, statement: str) -> None:
        import psycopg

        # CREATE / DROP DATABASE cannot run inside a transaction.
        with psycopg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, dbname="postgres", autocommit=True) as conn:
            conn.execute(statement)

    def new_database(self) -> str:
        """The URL of a new empty database: each test gets a store of its own, as with SQLite's tmp folders."""
        name = f"farm_{uuid.uuid4().hex[:12]}"
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        # FORCE ends connections a test left open (pools, the dashboard's cached store).
        self._admin(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


@contextmanager
def running_server() -> Iterator[PostgresServer]:
    """initdb into a temporary folder, `pg_ctl start` on a free loopback port; `pg_ctl stop` and delete after."""
    bin_dir, prefix = binaries(), _owner()
    # Under root, in /tmp: TMPDIR may lie inside root's home, which the postgres user cannot enter.
    folder = Path(tempfile.mkdtemp(prefix="farm-postgres-", dir="/tmp" if prefix else None))
    if prefix:
        shutil.chown(folder, "postgres", "postgres")
    data, log = folder / "data", folder / "server.log"

    def run(*command: str) -> None:
        # cwd: the server's user may not be allowed into the caller's working directory.
        done = subprocess.run([*prefix, *command], cwd=folder, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise PostgresUnavailable(f"{' '.join(command)} failed: {done.stdout}{done.stderr}{tail}")

    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8",
            "--locale=C.UTF-8", "--no-sync", "--no-instructions")
        port = _free_port()
        # Throwaway data: no fsync; the socket in our folder (not /var/run/postgresql, which may not exist);
        # a time zone other than UTC, as many servers have, which farm must not show.
        options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={folder} " \
                  "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 " \
                  "-c timezone=America/New_York"
        run(str(bin_dir / "pg_ctl"), "start", "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", options)
        try:
            yield PostgresServer(port)
        finally:
            run(str(bin_dir / "pg_ctl"), "stop", "-D", str(data), "-m", "fast", "-w", "-t", "60")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
