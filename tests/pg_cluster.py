"""A throwaway PostgreSQL cluster for tests and benchmarks.

Starts a private cluster from the installed server binaries (Debian's
``postgresql`` package: ``/usr/lib/postgresql/*/bin``, or ``pg_ctl`` on
``PATH``) in a temporary directory, on a free port of 127.0.0.1, with trust
authentication, and removes it at the end. ``initdb`` and ``pg_ctl`` refuse to
run as root, so as root they run as the ``postgres`` user.

Plain Python, no pytest: used by the test fixtures (``tests/pg_fixtures.py``)
and by ``benchmarks/bench_postgres.py`` (which adds the repository root to
``sys.path``). By default the cluster trades durability for speed (``fsync``,
``synchronous_commit`` and ``full_page_writes`` off), which is what tests
want; ``PgCluster.start(durable=True)`` keeps PostgreSQL's own defaults, for
benchmarks.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

__all__ = ["PgCluster", "find_bindir"]


def find_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl`` (newest version), or None."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
    )
    for bindir in reversed(candidates):
        if (Path(bindir) / "initdb").exists() and (Path(bindir) / "pg_ctl").exists():
            return Path(bindir)
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl and shutil.which("initdb"):
        return Path(pg_ctl).parent
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PgCluster:
    """A running throwaway cluster. Use :meth:`start` and :meth:`stop` (or ``with``)."""

    def __init__(self, bindir: Path, base: Path, port: int, *, durable: bool = False) -> None:
        self.bindir = bindir
        self.durable = durable
        self.base = base
        self.datadir = base / "data"
        self.logfile = base / "server.log"
        self.port = port
        self._as_postgres = os.geteuid() == 0
        self._db_counter = itertools.count()

    # -- lifecycle -----------------------------------------------------------

    @classmethod
    def start(cls, bindir: Path | None = None, *, durable: bool = False) -> PgCluster:
        """initdb + start a new cluster; raise RuntimeError if the binaries are missing.

        ``durable``: keep PostgreSQL's default durability (fsync on) instead
        of turning it off for speed.
        """
        bindir = bindir or find_bindir()
        if bindir is None:
            raise RuntimeError(
                "PostgreSQL server binaries not found (looked in /usr/lib/postgresql/*/bin "
                "and PATH); install them with `apt-get install -y postgresql`"
            )
        base = Path(tempfile.mkdtemp(prefix="trio-monitor-pg-"))
        cluster = cls(bindir, base, _free_port(), durable=durable)
        try:
            if cluster._as_postgres:
                shutil.chown(base, user="postgres", group="postgres")
            cluster._run(
                "initdb",
                "-D",
                str(cluster.datadir),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            )
            cluster._pg_ctl_start()
        except BaseException:
            cluster._remove()
            raise
        return cluster

    def _options(self) -> str:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.base} "
        if not self.durable:
            options += "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
        return options + "-c max_connections=200"

    def _pg_ctl_start(self) -> None:
        self._run(
            "pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-w",
            "-o", self._options(), "start",
        )  # fmt: skip

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every connection is dropped."""
        self._run(
            "pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-w",
            "-m", "fast", "-o", self._options(), "restart",
        )  # fmt: skip

    def stop(self) -> None:
        """Stop the server and remove its directory."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", str(self.datadir), "-w", "-m", "immediate", "stop")
        self._remove()

    def _remove(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bindir / tool), *args]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            log = self.logfile.read_text() if self.logfile.exists() else ""
            raise subprocess.CalledProcessError(
                proc.returncode, cmd, proc.stdout, proc.stderr + "\n" + log[-2000:]
            )

    # -- databases -----------------------------------------------------------

    def url(self, dbname: str = "postgres") -> str:
        """A ``postgresql://`` URL for a database of this cluster (over TCP)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def execute(self, sql: str, dbname: str = "postgres") -> None:
        """Run one statement in autocommit mode (needs psycopg)."""
        import psycopg

        with psycopg.connect(self.url(dbname), autocommit=True) as conn:
            conn.execute(sql.encode())

    def create_database(self, name: str | None = None) -> str:
        """Create a new empty database; return its URL."""
        name = name or f"test_{os.getpid()}_{next(self._db_counter)}"
        self.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting its sessions."""
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
