"""A PostgreSQL cluster of the test's own, which the test can crash and restart.

`initdb` + `pg_ctl` of the installed server (Debian: /usr/lib/postgresql/<v>/bin) in a fresh
folder under the system temp dir, listening on 127.0.0.1 on a free port only (no Unix socket),
trust authentication, user `postgres`. As root it runs as the `postgres` user (`runuser`):
PostgreSQL refuses to run as root. `fsync=off` keeps it quick on a loaded CI machine; a process
crash (`stop("immediate")`: SIGQUIT to the postmaster, no shutdown checkpoint, crash recovery on
the next start) loses nothing with it, since the OS still has every write.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.fixtures.services import free_port


def pg_bindir() -> Path | None:
    """The newest installed server's bin folder, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


class PgCluster:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="smsgw-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, timeout=60)

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                  "--no-sync", "--no-instructions")

    def start(self) -> None:
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
                "-c fsync=off -c max_connections=40")
        res = self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.log), "-w",
                        "-t", "30", "start", check=False)
        if res.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {res.stderr.decode()}\n{self.server_log()}")

    def stop(self, mode: str = "fast") -> None:
        """`immediate`: a crash (every backend killed at once); `fast`: a clean shutdown."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop",
                  check=False)

    def server_log(self, tail: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
