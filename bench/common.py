"""What the scenarios share: a broker of their own, processes, clients, payloads, waiting, results."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import resource
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from gochat_streams import topics
from gochat_streams.devstack import DEV_ENV, Stack, free_port
from gochat_streams.gateway.tokens import Keyring, issue_token
from gochat_streams.kafka import client_kwargs, partitions_of
from gochat_streams.monitor import OffsetReader, lags
from gochat_streams.operator import operator_headers
from gochat_streams.settings import Settings

from .profile import Profile, print_profile

RESULTS = Path(__file__).resolve().parent / "results"
#: How long a scenario waits for something that should happen.
WAIT_S = 600.0
LOGIC_APP, TASK_APP = "gochat_streams.app:app", "gochat_streams.app:task_app"
#: What Faust logs once a worker consumes.
WORKER_READY = "[^Worker]: Ready"
#: Signs the tokens of the bench's clients (GOCHAT_AUTH_SECRET of its gateways, in dev mode).
SECRET = "bench-secret"
KEYS = Keyring.single(SECRET)

#: Gateway flood protection raised for the scenarios that load gateways, so that the bench's
#: load is measured rather than refused (bench/e2e.py says why each one).
GATEWAY_LOAD_ENV = {
    "GOCHAT_MAX_FRAMES_PER_S": "100000",
    "GOCHAT_MAX_FRAMES_BURST": "100000",
    "GOCHAT_MAX_UNSENT": "1000000",
    "GOCHAT_WS_HEARTBEAT_S": "3600",
}

Frame = dict[str, Any]


@dataclass
class Service:
    """A process the bench started: its base URL and its Popen."""

    name: str
    url: str
    proc: subprocess.Popen[bytes]
    #: What a read of its operator endpoints (views, /metrics) sends: the token, where the
    #: environment sets GOCHAT_OPERATOR_TOKEN (operator.py).
    headers: dict[str, str] = field(default_factory=dict)

    def cpu_s(self) -> float:
        """The CPU seconds the process has used (user and system, all its threads), from /proc."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime

    def memory_mb(self, which: str = "VmRSS") -> float:
        """``VmRSS`` (resident now) or ``VmHWM`` (its peak) from /proc, in MB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(f"{which}:"):
                return round(int(line.split()[1]) / 1024, 1)
        raise LookupError(f"no {which} for {self.name} (pid {self.proc.pid})")


@dataclass
class Bench:
    """One run's broker, namespace and processes."""

    stack: Stack
    env: dict[str, str]
    root: Path
    #: Sample the processes a scenario names with py-spy while its clock runs (``--profile``).
    profile: bool = False
    profiles: list[dict[str, Any]] = field(default_factory=list)

    @contextlib.contextmanager
    def measured(self, *services: Service) -> Iterator[dict[str, float]]:
        """The CPU seconds each of ``services`` uses in the block (by name, filled in at its end);
        sampled with py-spy too if this run profiles.

        CPU time a message is the steadier figure on this shared machine: a process waiting
        for a core stretches the wall clock, not its own CPU time.
        """
        cpu: dict[str, float] = {}
        before = {service.name: service.cpu_s() for service in services}
        stamp = time.strftime("%Y%m%dT%H%M%S")
        runs = [Profile.start(service.name, service.proc.pid, RESULTS / f"profile-{service.name}-{stamp}.txt")
                for service in services] if self.profile else []
        try:
            yield cpu
        finally:
            cpu.update({service.name: round(service.cpu_s() - before[service.name], 2) for service in services})
            self.profiles += [run.stop() for run in runs]

    def brokers(self) -> list[Service]:
        """The Kafka nodes this run started (none with ``--broker``): their CPU is measured too."""
        return [Service(name, "", proc) for name, proc in self.stack.procs if name.startswith("kafka")]

    @property
    def settings(self) -> Settings:
        return Settings(**{k[len("GOCHAT_"):].lower(): v for k, v in self.env.items()})

    def start_worker(self, name: str, app: str = LOGIC_APP) -> Service:
        """A Faust worker, once it is ready: the logic app's /ready/ (its tables recovered), or the
        log line Faust writes when the task app, which has no such view, consumes."""
        log = self.stack.log_dir / f"{name}.log"
        started = _count(log, WORKER_READY)
        port = free_port()
        proc = self.stack.start_worker(name, {**self.env, "GOCHAT_DATA_DIR": str(self._data(name))}, port,
                                       timeout=WAIT_S, app=app)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + WAIT_S
        while not (_ready(f"{url}/ready/") if app == LOGIC_APP else _count(log, WORKER_READY) > started):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise TimeoutError(f"{name} not ready: see {log}")
            time.sleep(0.2)
        return Service(name, url, proc, operator_headers(self.settings))

    def serve_clients(self, env: dict[str, str] | None = None) -> None:
        """What gateways need, for the processes started after: Redis (the history cache, which the
        task worker invalidates), the token secret, a message store the task worker writes and the
        gateways read; plus ``env`` (say GATEWAY_LOAD_ENV)."""
        self.env.update({
            "GOCHAT_REDIS_URL": self.stack.start_redis(free_port()),
            "GOCHAT_AUTH_SECRET": SECRET,
            "GOCHAT_STORE_URL": f"sqlite:///{self.root / 'messages.sqlite3'}",
            "GOCHAT_PUSH_OUTBOX": str(self.root / "push-outbox.jsonl"),
            **(env or {}),
        })

    def start_gateway(self, gateway_id: str) -> Service:
        """A gateway (after :meth:`serve_clients`), once its downstream consumer is positioned."""
        name, port = f"gateway-{gateway_id}", free_port()
        proc = self.stack.start_gateway(name, {**self.env, "GOCHAT_GATEWAY_ID": gateway_id,
                                               "GOCHAT_DATA_DIR": str(self._data(name))}, port, timeout=WAIT_S)
        return Service(name, f"http://127.0.0.1:{port}", proc, operator_headers(self.settings))

    def _data(self, name: str) -> Path:
        data = self.root / name
        data.mkdir(parents=True, exist_ok=True)
        return data


async def start_chat_services(bench: Bench, gateway_ids: list[str],
                              env: dict[str, str]) -> tuple[Service, Service, list[Service]]:
    """Everything a client needs, started in order: topics, a logic worker, a task worker and
    the gateways (with ``env`` for the clients' side); the logic worker, the task worker and
    the gateways."""
    bench.serve_clients(env)
    s = bench.settings
    await topics.ensure_topics(s, [*topics.core(s), *(topics.downstream(s, gw) for gw in gateway_ids)])
    worker = bench.start_worker("logic")
    tasks = bench.start_worker("tasks", app=TASK_APP)
    return worker, tasks, [bench.start_gateway(gw) for gw in gateway_ids]


def _count(log: Path, text: str) -> int:
    return log.read_text(errors="replace").count(text) if log.exists() else 0


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:  # 503 (HTTPError) while it starts, or not listening yet
        return False


def new_bench(root: Path, broker: str | None, profile: bool = False, kafka_nodes: int = 1) -> Bench:
    """A bench on ``broker``, or on a Kafka broker of its own: one node, as the dev stack's,
    or a cluster of ``kafka_nodes`` whose topics take the spec's replicas."""
    stack = Stack(root / "logs")
    if broker is None:
        broker = stack.start_broker() if kafka_nodes == 1 else stack.start_kafka(kafka_nodes).url
    dev = dict(DEV_ENV)
    if kafka_nodes > 1:
        dev = {name: value for name, value in dev.items() if not name.endswith("_REPLICAS")}
    env = {
        **dev,
        # Every process inherits the environment's GOCHAT_* settings (Stack.spawn); here they
        # override the dev stack's too, as in GOCHAT_FETCH_MAX_WAIT_MS=50 python -m bench e2e.
        **{name: os.environ[name] for name in dev if name in os.environ},
        "GOCHAT_BROKER_URL": broker,
        "GOCHAT_NAMESPACE": f"bench{uuid.uuid4().hex[:8]}.",
        "GOCHAT_TABLE_STORE": "rocksdb://",
    }
    return Bench(stack, env, root, profile)


def raise_open_files(needed: int) -> None:
    """Raise this process's open-file limit to ``needed`` (processes it spawns later inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise RuntimeError(f"{needed} open files needed, the hard limit is {hard} (ulimit -Hn)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def text_message(i: int, sender: str, recipient: str, size: int = 200) -> dict[str, Any]:
    """A single-chat message whose JSON is about ``size`` bytes."""
    message = {"message_id": f"m{i:09d}", "from_user_id": sender, "to_user_id": recipient,
               "conversation_id": f"c_{sender}_{recipient}", "content": "", "message_type": "text",
               "metadata": {}, "timestamp": int(time.time() * 1000), "gateway_id": "gw0"}
    message["content"] = "x" * max(1, size - len(json.dumps(message)))
    return message


class KeyValue(Protocol):
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


async def send_batches(producer: AIOKafkaProducer, topic: str, partition: int,
                       records: Iterable[KeyValue]) -> list[asyncio.Future[Any]]:
    """``records`` to one partition of ``topic``, in as few record batches as fit; their futures."""
    sent, batch = [], producer.create_batch()
    for record in records:
        if batch.append(key=record.key, value=record.value, timestamp=None) is None:
            sent.append(await producer.send_batch(batch, topic, partition=partition))
            batch = producer.create_batch()
            batch.append(key=record.key, value=record.value, timestamp=None)
    sent.append(await producer.send_batch(batch, topic, partition=partition))
    return sent


async def count_records(s: Settings, topics: list[str], expected: int, started: float) -> tuple[int, float]:
    """Read ``topics`` from their start until ``expected`` records arrived; (count, seconds since started)."""
    consumer = AIOKafkaConsumer(**client_kwargs(s), group_id=None, enable_auto_commit=False,
                                max_partition_fetch_bytes=4 * 1024 * 1024, fetch_max_wait_ms=50)
    await consumer.start()
    try:
        tps = await partitions_of(s, topics)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        count, last = 0, started
        async with asyncio.timeout(WAIT_S):
            while count < expected:
                for batch in (await consumer.getmany(timeout_ms=200, max_records=10_000)).values():
                    count += len(batch)
                    last = time.perf_counter()
        return count, last - started
    finally:
        await consumer.stop()


async def wait_consumed(s: Settings, group_id: str, topic: str) -> None:
    """Until the group has committed everything written to ``topic``."""
    reader = OffsetReader(s)
    await reader.start()
    try:
        async with asyncio.timeout(WAIT_S):
            while True:
                offsets, groups = await reader.read()
                pending = sum(lag for (g, t, _), lag in lags(offsets, groups).items() if g == group_id and t == topic)
                if pending == 0:
                    return
                await asyncio.sleep(0.5)
    finally:
        await reader.stop()


async def settle(count: Callable[[], int], expected: int, timeout: float, idle_s: float | None = None) -> int:
    """Wait until ``count()`` reaches ``expected``, ``timeout`` passes or, with ``idle_s``, it has not
    grown for that long (what is still missing is not coming); the count then."""
    deadline = time.monotonic() + timeout
    last, changed = count(), time.monotonic()
    while (now := count()) < expected:
        tick = time.monotonic()
        if now != last:
            last, changed = now, tick
        if tick > deadline or (idle_s is not None and tick - changed > idle_s):
            break
        await asyncio.sleep(0.05)
    return count()


class Clients:
    """Users' WebSockets in this process. A task per socket reads it as a real client does: it
    answers the gateway's pings (aiohttp does while reading), hands each frame to ``on_frame``
    and acks each message frame. An async context manager: leaving it closes them all."""

    def __init__(self, on_frame: Callable[[str, Frame], None] | None = None) -> None:
        self.on_frame = on_frame
        self.sockets: dict[str, aiohttp.ClientWebSocketResponse] = {}
        #: Sockets that the gateway closed before :meth:`close`.
        self.dropped = 0
        self._readers: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._closing = False

    async def __aenter__(self) -> Clients:
        # No connection limit: every WebSocket holds one (the default pool of 100 would block the 101st).
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self, gateways: list[Service], users: list[str], concurrency: int = 100) -> None:
        """User ``i`` on ``gateways[i % len(gateways)]``, ``concurrency`` handshakes at a time."""
        assert self._session is not None, "use Clients as an async context manager"
        session, slots = self._session, asyncio.Semaphore(concurrency)

        async def one(i: int, user: str) -> None:
            async with slots:
                ws = await session.ws_connect(f"{gateways[i % len(gateways)].url}/ws",
                                              headers={"Authorization": f"Bearer {issue_token(user, KEYS, 86400)}"})
            self.sockets[user] = ws
            self._readers.append(asyncio.create_task(self._read(user, ws)))

        await asyncio.gather(*(one(i, user) for i, user in enumerate(users)))

    async def send(self, user: str, message: dict[str, Any]) -> None:
        """A ``send`` frame from ``user`` (README, "Gateway protocol")."""
        await self.sockets[user].send_str(json.dumps({"type": "send", "message": message}))

    async def _read(self, user: str, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            if self.on_frame is not None:
                self.on_frame(user, frame)
            if frame["type"] == "message":
                await ws.send_str(json.dumps({"type": "ack", "message_id": frame["message"]["message_id"]}))
        if not self._closing:
            self.dropped += 1

    async def close(self) -> None:
        self._closing = True
        await asyncio.gather(*(ws.close() for ws in self.sockets.values()), return_exceptions=True)
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        if self._session is not None:
            await self._session.close()


async def user_state(session: aiohttp.ClientSession, worker: Service, user: str) -> dict[str, Any]:
    """A logic worker's ``/users/{id}/`` view (gochat_streams/views.py)."""
    async with session.get(f"{worker.url}/users/{user}/", headers=worker.headers) as response:
        response.raise_for_status()
        return await response.json()


async def wait_online(worker: Service, users: list[str], timeout: float = WAIT_S) -> None:
    """Until the worker's presence table has a connection of every user: from then on a message to
    any of them is pushed to their gateway, not handed to an offline push."""
    waiting = set(users)
    async with aiohttp.ClientSession() as session, asyncio.timeout(timeout):
        while True:
            states = await asyncio.gather(*(user_state(session, worker, user) for user in waiting))
            waiting -= {state["user_id"] for state in states if state["connections"]}
            if not waiting:
                return
            await asyncio.sleep(0.2)


async def scrape(service: Service) -> dict[str, float]:
    """A process's ``/metrics``: ``'name{labels}' -> value``."""
    async with aiohttp.ClientSession(headers=service.headers) as session, \
            session.get(f"{service.url}/metrics") as response:
        text = await response.text()
    samples = (line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {name: float(value) for name, value in samples}


@dataclass
class Result:
    """A scenario's rows, what else goes into its JSON, and a line to print under its table."""

    rows: list[dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)
    summary: str | None = None


def lost(row: dict[str, Any]) -> int:
    """What a row says was lost: its ``lost`` count, or its records not delivered."""
    if "lost" in row:
        return int(row["lost"])
    return int(row.get("records", 0)) - int(row.get("delivered", row.get("records", 0)))


def machine() -> dict[str, Any]:
    mem_kb = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), 0)
    return {"cpus": os.cpu_count(), "memory_gb": round(mem_kb / 1024 / 1024, 1), "python": platform.python_version()}


def report(scenario: str, rows: list[dict[str, Any]], extra: dict[str, Any], summary: str | None = None) -> Path:
    """Print ``rows`` as a table (and ``summary`` under it) and write everything to bench/results/."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    widths = {c: max(len(c), *(len(_fmt(row.get(c))) for row in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(_fmt(row.get(c)).ljust(widths[c]) for c in columns))
    if summary:
        print(f"\n{summary}")
    for profile in extra.get("profiles", []):
        print_profile(profile)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{scenario}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps({"scenario": scenario, "machine": machine(), "rows": rows, **extra}, indent=2))
    print(f"\n{path}")
    return path


def _fmt(value: Any) -> str:
    if isinstance(value, bool):  # before int: a bool is one
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.1f}" if value >= 100 else f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)
