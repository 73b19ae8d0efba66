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


def start_postgres(tmp_dir: Path) -> tuple[str, Callable[[], None]]:
    """Start a server on a free loopback port; return its DSN and a function that stops it."""
    bin_dir = _bin_dir()
    as_root = os.geteuid() == 0
    if as_root:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError(f"running as root needs the `postgres` system user: {INSTALL_HINT}") from None
        work = Path(tempfile.mkdtemp(prefix="gochat-pg-"))
        os.chown(work, owner.pw_uid, owner.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    else:
        work = tmp_dir / "postgres"
        work.mkdir(parents=True)
        prefix = []
    data, log = work / "data", work / "server.log"
    port = free_port()

    def run(*args: str) -> None:
        # cwd=work: the postgres user may not be allowed into the caller's working directory.
        done = subprocess.run([*prefix, *args], cwd=work, capture_output=True, text=True)
        if done.returncode != 0:
            server_log = log.read_text(errors="replace")[-4000:] if log.exists() else ""
            raise RuntimeError(f"{args[0]} failed ({done.returncode}):\n{done.stdout}{done.stderr}{server_log}")

    def stop() -> None:
        try:
            run(str(bin_dir / "pg_ctl"), "stop", "-D", str(data), "-m", "fast", "-w")
        finally:
            if as_root:
                shutil.rmtree(work, ignore_errors=True)

    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", USER, "-E", "UTF8", "--no-locale")
        run(
            str(bin_dir / "pg_ctl"), "start", "-D", str(data), "-l", str(log), "-w", "-t", "60",
            "-o", f"-p {port} -k {work} -h 127.0.0.1 -c fsync=off",
        )
    except BaseException:
        if as_root:
            shutil.rmtree(work, ignore_errors=True)
        raise
    return f"postgresql://{USER}@127.0.0.1:{port}/postgres", stop
