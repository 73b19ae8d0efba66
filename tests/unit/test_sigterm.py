"""A test run stopped with SIGTERM stops the processes its fixtures started (tests/conftest.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_RUN = textwrap.dedent("""
    import time
    from pathlib import Path

    import pytest

    from gochat_streams.devstack import Stack


    @pytest.fixture(scope="session")
    def server(tmp_path_factory):
        stack = Stack(tmp_path_factory.mktemp("logs"))
        proc = stack.spawn("server", ["sleep", "600"])
        Path({pid_file!r}).write_text(str(proc.pid))
        try:
            yield
        finally:
            stack.stop()


    def test_long(server):
        time.sleep(600)
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A child of ours that has exited but not been reaped yet is a zombie: gone.
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_sigterm_stops_the_fixtures_processes(tmp_path: Path) -> None:
    pid_file = tmp_path / "server.pid"
    (tmp_path / "test_run.py").write_text(_RUN.format(pid_file=str(pid_file)))
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
         f"--basetemp={tmp_path / 'base'}", "--rootdir", str(tmp_path), str(tmp_path / "test_run.py")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while not pid_file.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pid_file.exists(), run.communicate()[0].decode()
    server = int(pid_file.read_text())
    try:
        run.send_signal(signal.SIGTERM)
        output = run.communicate(timeout=60)[0].decode()
        deadline = time.monotonic() + 10
        while _alive(server) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(server), f"the fixture's process outlived the run:\n{output}"
        assert "stopped by SIGTERM" in output
    finally:
        if _alive(server):
            os.killpg(server, signal.SIGKILL)
