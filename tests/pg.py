"""A throwaway PostgreSQL server from Debian's ``postgresql`` package binaries, for tests.

Only the server binaries are needed (``initdb``, ``pg_ctl``); nothing is installed or
configured system-wide. As root, the server runs as the ``postgres`` user (initdb refuses
root), in a fresh directory under the system temp dir: pytest's own tmp dirs are mode
0700 and owned by root, so that user could not enter them.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from gochat_streams.devstack import free_port

USER = "gochat"
INSTALL_HINT = "install Debian's `postgresql` package (apt-get install postgresql)"


def _bin_dir() -> Path:
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if versions:
        return Path(versions[-1]).parent
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    raise RuntimeError(f"no PostgreSQL server binaries (initdb, pg_ctl) found: {INSTALL_HINT}")


class Postgres:
    """A server in its own directory, on a free loopback port; it can be stopped and started again."""

    def __init__(self, tmp_dir: Path) -> None:
        self.bin_dir = _bin_dir()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError(f"running as root needs the `postgres` system user: {INSTALL_HINT}") from None
            self.work = Path(tempfile.mkdtemp(prefix="gochat-pg-"))
            os.chown(self.work, owner.pw_uid, owner.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]
        else:
            self.work = tmp_dir / "postgres"
            self.work.mkdir(parents=True)
            self.prefix = []
        self.data, self.log = self.work / "data", self.work / "server.log"
        self.port = free_port()
        self.dsn = f"postgresql://{USER}@127.0.0.1:{self.port}/postgres"
        try:
            self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", USER, "-E", "UTF8", "--no-locale")
        except BaseException:
            self.remove()
            raise

    def _run(self, program: str, *args: str) -> None:
        # cwd=work: the postgres user may not be allowed into the caller's working directory.
        done = subprocess.run([*self.prefix, str(self.bin_dir / program), *args], cwd=self.work,
                              capture_output=True, text=True)
        if done.returncode != 0:
            server_log = self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
            raise RuntimeError(f"{program} failed ({done.returncode}):\n{done.stdout}{done.stderr}{server_log}")

    def start(self) -> None:
        self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                  "-o", f"-p {self.port} -k {self.work} -h 127.0.0.1 -c fsync=off")

    def stop(self) -> None:
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w")

    def remove(self) -> None:
        if self.as_root:
            shutil.rmtree(self.work, ignore_errors=True)


def start_postgres(tmp_dir: Path) -> tuple[str, Callable[[], None]]:
    """Start a server on a free loopback port; return its DSN and a function that stops it."""
    server = Postgres(tmp_dir)
    try:
        server.start()
    except BaseException:
        server.remove()
        raise

    def stop() -> None:
        try:
            server.stop()
        finally:
            server.remove()

    return server.dsn, stop
