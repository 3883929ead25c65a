"""A real PostgreSQL for tests: Debian's server binaries (`initdb`, `pg_ctl`) run into a
temporary directory, listening on 127.0.0.1 on a free port and on a private socket
directory. PostgreSQL refuses to run as root (CI runs as root), so as root the cluster
belongs to `nobody` and every binary runs through `runuser`."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg

_USER = "sandbox"


def postgres_bindir() -> Path | None:
    """The newest installed server's bin directory, or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    return Path(found[-1]).parent if found else None


def postgres_problem() -> str | None:
    """Why no PostgreSQL can be started here, or None."""
    if postgres_bindir() is None:
        return "PostgreSQL's server binaries are missing (apt-get install postgresql)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root, and runuser (util-linux) is missing to drop to nobody"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One throwaway cluster. `url()` names a database; `database()` makes a fresh one."""

    def __init__(self, *, fsync: bool = False) -> None:
        bindir = postgres_bindir()
        assert bindir is not None, postgres_problem()
        self._bin = bindir
        self.root = Path(tempfile.mkdtemp(prefix="sandbox-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.sockets.mkdir()
        self.port = free_port()
        self._fsync = fsync
        if os.geteuid() == 0:
            for path in (self.root, self.sockets):
                shutil.chown(path, "nobody", "nogroup")
        self._run("initdb", "-D", str(self.data), "-U", _USER, "--auth=trust", "-E", "UTF8")
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self._bin / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "nobody", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120, cwd=self.root)

    def start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.sockets}"
            f" -c fsync={'on' if self._fsync else 'off'} -c max_connections=200"
        )
        self._run(
            "pg_ctl", "start", "-w", "-D", str(self.data), "-l", str(self.root / "log"),
            "-o", options,
        )  # fmt: skip

    def stop(self) -> None:
        self._run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.data))

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{_USER}@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """A new, empty database; its url."""
        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}".encode())
        return self.url(name)

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
