"""``make run`` twice: the dev stack keeps its broker's data, and starts clean when that is gone.

Each run is ``python -m gochat_streams.devstack`` in a subprocess, on ports and a dir of the
test's own, stopped with SIGINT as Ctrl-C stops ``make run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gochat_streams.devstack import free_port

from .conftest import WAIT_S, Client

pytestmark = pytest.mark.integration

#: What the dev stack prints once everything it starts is ready.
READY = "Ctrl-C stops everything."
WIPED = "The broker starts without data"
#: A run starts a broker, Redis, two workers, a gateway and the monitor, one after the other.
START_S = 240.0


@dataclass
class DevStack:
    """One run of the dev stack: its process and what it printed."""

    proc: subprocess.Popen[bytes]
    output: Path
    ports: dict[str, int]

    @property
    def printed(self) -> str:
        return self.output.read_text(errors="replace")

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}"

    def token(self, user: str) -> str:
        """The user's token from the URL the stack printed for them."""
        match = re.search(rf"^  {user}: \S+#token=(\S+)$", self.printed, re.MULTILINE)
        assert match, self.printed
        return match.group(1)

    def interrupt(self) -> int:
        """SIGINT, as Ctrl-C sends it; its exit code once everything it started has stopped."""
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(120)


@pytest.fixture
def devstack(tmp_path: Path) -> Iterator[Any]:
    """Starts runs of the dev stack in ``tmp_path/dev``, all on the same ports, one at a time."""
    ports = {name: free_port() for name in ("broker", "redis", "gateway", "worker", "tasks", "monitor")}
    runs: list[DevStack] = []

    def start() -> DevStack:
        output = tmp_path / f"run-{len(runs) + 1}.txt"
        with open(output, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gochat_streams.devstack", "--dir", str(tmp_path / "dev"),
                 "--broker-port", str(ports["broker"]), "--redis-port", str(ports["redis"]),
                 "--gateway-port", str(ports["gateway"]), "--worker-web-port", str(ports["worker"]),
                 "--task-worker-web-port", str(ports["tasks"]), "--monitor-port", str(ports["monitor"])],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                # As `make run` starts it: not with the settings of this process, whose unit
                # tests' conftest sets GOCHAT_TABLE_STORE=memory:// in the same session.
                env={name: value for name, value in os.environ.items() if not name.startswith("GOCHAT_")},
            )
        run = DevStack(proc, output, ports)
        runs.append(run)
        deadline = time.monotonic() + START_S
        while READY not in run.printed:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the dev stack did not start:\n{run.printed}\n{_logs(tmp_path / 'dev' / 'logs')}")
            time.sleep(0.5)
        return run

    yield start
    for run in runs:
        if run.proc.poll() is None:
            run.interrupt()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_a_restarted_dev_stack_has_its_messages_and_a_new_broker_starts_clean(
    devstack: Any, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    dev = tmp_path / "dev"
    first = devstack()
    assert WIPED not in first.printed
    assert f"broker  kafka://127.0.0.1:{first.ports['broker']} " in first.printed
    # Nothing the dev stack starts asks who connects (the broker has no authentication):
    # every socket its processes listen on is on loopback.
    listening = {pid: _listening_addresses(pid) for pid in _processes_of(dev)}
    assert len(listening) == 5 and all(listening.values()), listening  # broker, 2 workers, gateway, monitor
    assert set().union(*listening.values()) == {"127.0.0.1"}
    alice = await _connect(http, first, "alice")
    await alice.send("before-restart", "bob", "sent before Ctrl-C")
    assert await alice.next_frame() == {"type": "ack", "message_id": "before-restart"}
    # Stored by the task worker: the logic worker has routed it, into bob's inbox too.
    assert [m["message_id"] for m in await _history(http, first, "alice", "alice:bob", 1)] == ["before-restart"]
    await alice.ws.close()
    assert first.interrupt() == 0
    assert _left_running(first, dev) == []

    second = devstack()
    assert WIPED not in second.printed
    # bob was offline: his inbox, a table kept on the broker and in the worker's local
    # state, gives him the message when he connects.
    bob = await _connect(http, second, "bob")
    (synced,) = await bob.messages(1, ack=True)
    assert (synced["message_id"], synced["from_user_id"], synced["content"]) == (
        "before-restart", "alice", "sent before Ctrl-C")
    await bob.ws.close()
    assert second.interrupt() == 0
    assert _left_running(second, dev) == []

    shutil.rmtree(dev / "kafka")  # the broker's data is gone; the services' is still there
    third = devstack()
    assert f"{WIPED}: wiped {dev / 'data'}" in third.printed
    alice = await _connect(http, third, "alice")
    await alice.send("after-wipe", "bob", "a new start")
    assert await alice.next_frame() == {"type": "ack", "message_id": "after-wipe"}
    bob = await _connect(http, third, "bob")
    # Nothing of the earlier broker's is left: bob's inbox and the history hold the new message only.
    assert [m["message_id"] for m in await bob.messages(1)] == ["after-wipe"]
    assert [m["message_id"] for m in await _history(http, third, "bob", "alice:bob", 1)] == ["after-wipe"]
    await alice.ws.close()
    await bob.ws.close()
    assert third.interrupt() == 0
    assert _left_running(third, dev) == []


async def _connect(http: aiohttp.ClientSession, run: DevStack, user: str) -> Client:
    ws = await http.ws_connect(f"{run.gateway}/ws", headers={"Authorization": f"Bearer {run.token(user)}"})
    return Client(user, ws)


async def _history(http: aiohttp.ClientSession, run: DevStack, user: str, conversation_id: str,
                   count: int) -> list[dict[str, Any]]:
    """The conversation's history as ``user`` reads it, once it holds ``count`` messages."""
    async with asyncio.timeout(WAIT_S):
        while True:
            async with http.get(f"{run.gateway}/history", params={"conversation_id": conversation_id},
                                headers={"Authorization": f"Bearer {run.token(user)}"}) as response:
                assert response.status == 200, await response.text()
                messages = (await response.json())["messages"]
            if len(messages) >= count:
                return messages
            await asyncio.sleep(0.2)


def _left_running(run: DevStack, dev: Path) -> list[str]:
    """What is left of a stopped run: its processes, and sockets on its ports (Redis's)."""
    left = [f"pid {pid}: {Path(f'/proc/{pid}/cmdline').read_bytes().replace(NUL, b' ').decode()}"
            for pid in _processes_of(dev)]
    listening = {port for _, port, _ in _listening_sockets()}
    return left + [f"port {port} ({name}) listens" for name, port in run.ports.items() if port in listening]


NUL = b"\0"


def _processes_of(dev: Path) -> list[int]:
    """Processes with the run's dir in their command line or environment: the broker (its
    config), the workers, the gateway and the monitor (GOCHAT_DATA_DIR); not Redis."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            seen = (proc / "cmdline").read_bytes() + NUL + (proc / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours
            continue
        if f"{dev}/".encode() in seen:
            pids.append(int(proc.name))
    return pids


def _listening_sockets() -> list[tuple[str, int, str]]:
    """Every listening TCP socket: (address, port, inode), from /proc/net/tcp and tcp6."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            cells = row.split()
            if cells[3] != "0A":  # LISTEN
                continue
            address, port = cells[1].rsplit(":", 1)
            raw = bytes.fromhex(address)
            # /proc prints each 32-bit word in host (little-endian) order.
            words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            ip = ipaddress.ip_address(words)
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
                ip = ip.ipv4_mapped  # a Java socket bound to an IPv4 address
            out.append((str(ip), int(port, 16), cells[9]))
    return out


def _listening_addresses(pid: int) -> set[str]:
    """The addresses the process's listening sockets are bound to."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    return {address for address, _, inode in _listening_sockets() if inode in inodes}


def _logs(log_dir: Path) -> str:
    return "\n".join(f"----- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:])
                     for log in sorted(log_dir.glob("*.log")))
