"""A throwaway PostgreSQL cluster for the tests: initdb in a temporary directory as an
unprivileged user (PostgreSQL refuses to run as root, and CI runs as root), listening only
on a unix socket in that directory. Started once per session (tests/conftest.py); each test
gets a database of its own, copied from a migrated template."""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

USER = "edgehook"
TEMPLATE = "edgehook_template"


def binaries() -> Path | None:
    """Debian's /usr/lib/postgresql/<version>/bin (newest), or the PATH's."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _version(path: str) -> int:
    part = Path(path).parent.parent.name
    return int(part) if part.isdigit() else 0


class Cluster:
    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.dir = Path(tempfile.mkdtemp(prefix="edgehook-pg-"))
        self.data = self.dir / "data"
        self._names = itertools.count(1)
        self._as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "nobody")
            self._as = ["runuser", "-u", "nobody", "--"]

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, cwd=self.dir)

    def start(self, options: str = "") -> None:
        if not self.data.exists():
            self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", USER,
                      "--auth=trust", "-E", "UTF8", "--no-sync")  # fmt: skip
        options = (
            f"-k {self.dir} -c listen_addresses='' -c fsync=off -c max_connections=200 {options}"
        )
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-w",
                  "-l", str(self.dir / "log"), "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@/{database}?host={self.dir}"

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.encode())

    def fresh_database(self) -> str:
        """A new database with the current schema: its URL."""
        name = f"t{next(self._names)}"
        self.admin(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
        return self.url(name)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
