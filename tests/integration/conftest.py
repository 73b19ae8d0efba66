"""A real broker and Redis for the session; workers and gateways as subprocesses per test.

``GOCHAT_TEST_BROKER=kafka://host:9092`` (and ``GOCHAT_TEST_REDIS=redis://...``) run the
suite against servers of your own; otherwise a one-node Kafka (devstack.Stack.start_broker)
and redis-server start on loopback.
Every test gets its own namespace, so topics and consumer groups are fresh.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import RecordMetadata

from gochat_streams.content_crypto import content_keyring, new_key, write_key_file
from gochat_streams.devstack import DEV_ENV, KafkaCluster, Stack, free_port
from gochat_streams.gateway.tokens import Keyring, issue_token
from gochat_streams.kafka import client_kwargs, partitions_of
from gochat_streams.models import OfflinePushPayload
from gochat_streams.push import opened_notice
from gochat_streams.settings import Settings

#: The gateways' GOCHAT_AUTH_SECRET: short, which their dev mode (DEV_ENV) allows.
SECRET = "integration-test-secret"
#: GOCHAT_OPERATOR_TOKEN of the tests that set one (operator endpoints; gochat_streams/operator.py).
OPERATOR_TOKEN = "integration-operator-token-0123456789"
#: How long a test waits for something that should happen (first group joins included).
WAIT_S = 60.0


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    setattr(item, f"rep_{call.when}", outcome.get_result())


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    stack = Stack(tmp_path_factory.mktemp("servers"))
    try:
        yield {
            "GOCHAT_BROKER_URL": os.environ.get("GOCHAT_TEST_BROKER") or stack.start_broker(free_port()),
            "GOCHAT_REDIS_URL": os.environ.get("GOCHAT_TEST_REDIS") or stack.start_redis(free_port()),
        }
    finally:
        stack.stop()


@dataclass
class Cluster:
    """The processes of one test, sharing one namespace on the session's servers."""

    env: dict[str, str]
    root: Path
    stack: Stack
    workers: dict[str, Any] = field(default_factory=dict)
    gateways: dict[str, Any] = field(default_factory=dict)
    #: Each worker's web port (Faust's views, and ours in gochat_streams/views.py).
    web_ports: dict[str, int] = field(default_factory=dict)
    #: On a secured broker, the settings a process logs in with, by its principal's name
    #: (``logic``, ``task``, ``monitor``, ``gateway-<id>``): test_broker_security.py.
    credentials: Callable[[str], dict[str, str]] = lambda principal: {}

    @property
    def settings(self) -> Settings:
        return Settings(**{k[len("GOCHAT_"):].lower(): v for k, v in self.env.items()})

    def start_worker(self, name: str = "w1") -> None:
        data_dir = self.root / name
        data_dir.mkdir(exist_ok=True)
        port = self.web_ports[name] = free_port()
        ready = self._log_count(name, "[^Worker]: Ready")
        self.workers[name] = self.stack.start_worker(
            name, {**self.env, **self.credentials("logic"), "GOCHAT_DATA_DIR": str(data_dir)}, port)
        self.wait_for_log(name, "[^Worker]: Ready", occurrences=ready + 1)

    def kill_worker(self, name: str) -> None:
        """SIGKILL: no commit, no flush, no goodbye to the consumer group."""
        proc = self.workers.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def start_task_worker(self, name: str = "tasks") -> None:
        data_dir = self.root / name
        data_dir.mkdir(exist_ok=True)
        port = self.web_ports[name] = free_port()
        self.workers[name] = self.stack.start_worker(
            name, {**self.env, **self.credentials("task"), "GOCHAT_DATA_DIR": str(data_dir)}, port,
            app="gochat_streams.app:task_app"
        )
        self.wait_for_log(name, "[^Worker]: Ready")

    def pushes(self) -> list[dict[str, Any]]:
        """The offline pushes the task service wrote to its outbox, a sealed text's preview
        opened with the test's content keys as the webhook pusher opens it (push.py)."""
        outbox = Path(self.env["GOCHAT_PUSH_OUTBOX"])
        keys = content_keyring(self.settings)
        pushes = []
        for line in outbox.read_text().splitlines() if outbox.exists() else []:
            push = json.loads(line)
            pushed_at = push.pop("pushed_at")
            notice = opened_notice(keys, OfflinePushPayload.model_validate(push))
            pushes.append({**notice.model_dump(mode="json", exclude_none=True), "pushed_at": pushed_at})
        return pushes

    def stop_worker(self, name: str) -> None:
        self.stack.stop_one(self.workers.pop(name))

    def start_gateway(self, gateway_id: str) -> str:
        port = free_port()
        self.gateways[gateway_id] = self.stack.start_gateway(
            f"gateway-{gateway_id}", {**self.env, **self.credentials(f"gateway-{gateway_id}"),
                                      "GOCHAT_GATEWAY_ID": gateway_id}, port, timeout=WAIT_S
        )
        return f"{'https' if 'GOCHAT_GATEWAY_TLS_CERTFILE' in self.env else 'http'}://127.0.0.1:{port}"

    def start_monitor(self, gateways: list[str]) -> str:
        port = free_port()
        self.stack.start_monitor("monitor", {**self.env, **self.credentials("monitor"),
                                             "GOCHAT_MONITOR_GATEWAYS": json.dumps(gateways)}, port,
                                 timeout=WAIT_S)
        return f"http://127.0.0.1:{port}"

    def kill_gateway(self, gateway_id: str) -> None:
        """SIGKILL: the gateway cannot say its users went offline."""
        proc = self.gateways.pop(gateway_id)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def wait_for_log(self, name: str, text: str, *, occurrences: int = 1) -> None:
        import time

        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if self._log_count(name, text) >= occurrences:
                return
            time.sleep(0.1)
        raise TimeoutError(f"{name} did not log {text!r} within {WAIT_S}s")

    def _log_count(self, name: str, text: str) -> int:
        log = self.stack.log_dir / f"{name}.log"
        return log.read_text(errors="replace").count(text) if log.exists() else 0

    def assigned(self, worker: str, topic: str) -> set[int]:
        """The partitions of ``topic`` in the worker's latest assignment, as Faust logged it."""
        text = (self.stack.log_dir / f"{worker}.log").read_text(errors="replace")
        table = text.rsplit("Setting newly assigned partitions", 1)[-1].split("for group", 1)[0]
        for row in table.splitlines():
            cells = [c.strip() for c in row.split("|")]
            if len(cells) > 2 and cells[1] == topic:
                return _partition_set(cells[2])
        return set()

    def logs(self) -> str:
        parts = []
        for log in sorted(self.stack.log_dir.glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-60:]
            parts.append(f"----- {log.name} (last {len(lines)} lines)\n" + "\n".join(lines))
        return "\n".join(parts)


def _partition_set(text: str) -> set[int]:
    """Faust's ``{0-3, 7}`` notation -> ``{0, 1, 2, 3, 7}``."""
    out: set[int] = set()
    for part in text.strip("{}").split(","):
        if "-" in part:
            low, high = part.split("-")
            out.update(range(int(low), int(high) + 1))
        elif part.strip():
            out.add(int(part))
    return out


@pytest.fixture
def cluster(servers: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    env = {
        **DEV_ENV,
        **servers,
        "GOCHAT_NAMESPACE": f"t{uuid.uuid4().hex[:10]}.",
        "GOCHAT_AUTH_SECRET": SECRET,
        "GOCHAT_TABLE_STORE": "rocksdb://",
        # The suite checks outcomes, not latency: fetches wait longer than the dev stack's,
        # so the idle consumers of a test's processes poll less on two shared cores.
        "GOCHAT_FETCH_MAX_WAIT_MS": "500",
        # Shared by the task worker (writes) and the gateways (history).
        "GOCHAT_STORE_URL": f"sqlite:///{tmp_path / 'messages.sqlite3'}",
        "GOCHAT_PUSH_OUTBOX": str(tmp_path / "push-outbox.jsonl"),
    }
    # Message content is sealed under a fresh key of the test's own, in a key file that
    # `keys rotate` can add to (content_crypto.py), rather than DEV_ENV's published one.
    del env["GOCHAT_CONTENT_KEYS"]
    env["GOCHAT_CONTENT_KEYS_FILE"] = str(tmp_path / "content-keys.json")
    write_key_file(tmp_path / "content-keys.json", {"t1": new_key()}, "t1")
    stack = Stack(tmp_path / "logs")
    c = Cluster(env, tmp_path, stack)
    try:
        yield c
    finally:
        stack.stop()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(c.logs())


@pytest.fixture(scope="module")
def kafka3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """A 3-node KRaft cluster for a test module (about 1 GB and 10 s to start); tests that take
    nodes down bring them back."""
    stack = Stack(tmp_path_factory.mktemp("kafka3"))
    try:
        yield stack.start_kafka(3)
    finally:
        stack.stop()


@pytest.fixture
def cluster3(cluster: Cluster, kafka3: KafkaCluster) -> Cluster:
    """The test's processes on the module's 3-node Kafka, with the spec's replicas (not the dev stack's 1)."""
    for name in [name for name in cluster.env if name.endswith("_REPLICAS")]:
        del cluster.env[name]
    cluster.env["GOCHAT_BROKER_URL"] = kafka3.url
    return cluster


class Client:
    """One user's WebSocket, with the frames it has received."""

    def __init__(self, user_id: str, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.user_id = user_id
        self.ws = ws

    async def send(self, message_id: str, to_user_id: str | None, content: str = "hello", **extra: Any) -> None:
        message = {"message_id": message_id, "to_user_id": to_user_id, "conversation_id": f"c_{message_id}",
                   "content": content, "message_type": "text", "metadata": {}, **extra}
        await self.ws.send_json({"type": "send", "message": message})

    async def send_to_group(self, message_id: str, group_id: str, content: str = "hello") -> None:
        await self.send(message_id, None, content, conversation_id=group_id)

    async def group_action(self, message_id: str, group_id: str, action: str, **metadata: Any) -> None:
        await self.send(message_id, None, "", conversation_id=group_id, message_type="system_group",
                        metadata={"action": action, "group_id": group_id, **metadata})

    async def ack(self, message_id: str) -> None:
        await self.ws.send_json({"type": "ack", "message_id": message_id})

    async def messages(self, count: int, timeout: float = WAIT_S, ack: bool = False) -> list[dict[str, Any]]:
        """The next ``count`` message frames' messages (any other frame fails the test)."""
        out = []
        for _ in range(count):
            frame = await self.next_frame(timeout)
            assert frame["type"] == "message", frame
            out.append(frame["message"])
            if ack:
                await self.ack(frame["message"]["message_id"])
        return out

    async def nothing_more(self, wait_s: float = 2.0) -> None:
        """Fails if a frame arrives within ``wait_s``."""
        with pytest.raises(asyncio.TimeoutError):
            frame = await self.ws.receive_json(timeout=wait_s)
            pytest.fail(f"{self.user_id} got an unexpected frame: {frame}")

    async def next_frame(self, timeout: float = WAIT_S) -> dict[str, Any]:
        return await self.ws.receive_json(timeout=timeout)

    async def frames(self, count: int, timeout: float = WAIT_S) -> list[dict[str, Any]]:
        return [await self.next_frame(timeout) for _ in range(count)]


@pytest.fixture
async def connect() -> AsyncIterator[Any]:
    # No connection limit: every WebSocket holds one (the default pool of 100 would block the 101st).
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    sockets: list[aiohttp.ClientWebSocketResponse] = []

    async def _connect(base_url: str, user_id: str) -> Client:
        ws = await session.ws_connect(f"{base_url}/ws", headers={"Authorization": f"Bearer {token(user_id)}"})
        sockets.append(ws)
        return Client(user_id, ws)

    yield _connect
    for ws in sockets:
        await ws.close()
    await session.close()


def token(user_id: str, ttl_s: int = 3600) -> str:
    return issue_token(user_id, Keyring.single(SECRET), ttl_s)


async def history(base_url: str, user_id: str, conversation_id: str) -> tuple[int, Any]:
    """``GET /history`` as ``user_id``: the status, and the JSON body (the text unless 200)."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base_url}/history", params={"conversation_id": conversation_id},
                               headers={"Authorization": f"Bearer {token(user_id)}"}) as response:
            body = await response.json() if response.status == 200 else await response.text()
            return response.status, body


#: A record to produce: key, value, headers.
Record = tuple[str, bytes, dict[str, bytes]]


async def produce(settings: Settings, topic: str, records: list[tuple[str, bytes]] | list[Record], *,
                  max_request_size: int = 1024 * 1024) -> list[RecordMetadata]:
    """Produce ``records`` (key, value and, optionally, headers) in as few batches as the producer
    makes (linger), then flush; where each went.

    ``max_request_size`` (aiokafka's, 1 MiB by default) raised: a foreign producer of records larger
    than ours may be.
    """
    producer = AIOKafkaProducer(**client_kwargs(settings), acks="all", linger_ms=50, compression_type="lz4",
                                max_request_size=max_request_size)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key.encode(), headers=list(headers[0].items()) if headers else None)
                   for key, value, *headers in records]
        return list(await asyncio.gather(*futures))
    finally:
        await producer.stop()


async def consume_all(settings: Settings, topics: list[str], until: Any, timeout: float = WAIT_S) -> list[Any]:
    """Read ``topics`` from the start until ``until(records)`` is true; then return what was read."""
    tps = await partitions_of(settings, topics)
    consumer = AIOKafkaConsumer(**client_kwargs(settings), group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign(tps)
        records: list[Any] = []
        async with asyncio.timeout(timeout):
            while not until(records):
                for batch in (await consumer.getmany(timeout_ms=200)).values():
                    records.extend(batch)
        return records
    finally:
        await consumer.stop()
