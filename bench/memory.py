"""``memory``: RSS of a logic worker holding many users' state, and of a gateway holding idle sockets.

Worker: 100,000 online users in the presence table and 1,000,000 delivered marks (10 a user,
all acknowledged) in the inbox table's dedup state. The message path would take hours to
fill that, so the bench writes the tables' changelogs before the worker starts, as the
worker itself would have written them, and the worker recovers them before it is ready:

- topics ``{app id}-presence-changelog`` and ``{app id}-inbox-changelog`` (the app id is
  the logic group's), created as Faust declares them (compacted, ``im-user-topic``'s
  partition count);
- each record on the partition Faust writes it to: the partition of the event being
  handled, here the user's on ``im-user-topic`` (aiokafka's default murmur2 partitioner on
  the user id; a mark's own key is longer);
- keys raw (the tables' ``key_type=bytes``), values compact JSON (their ``json`` serializer);
- presence ``user -> {gateway_id: {connection_id: connected_at_ms}}``; per user, its marks
  and the sealed chunks of their expiry log (tables/dedup.py ``remember``, as ``deliver``
  calls it), and its inbox cursor, which carries the log.

Once the worker is ready, a sample of 20 users is checked through its ``/users/{id}/`` and
``/users/{id}/delivered/{sender}/{message_id}/`` views (verified), and its VmRSS (and VmHWM,
the peak, which recovery may set) is read from /proc. Then each sampled user is sent one of
its marked messages again, through ``im-upstream-topic``: ``deliver`` must drop every one
as a copy (deduplicated), which it does only if the mark is on the partition it reads. Last,
its ``gochat_table_keys`` (RocksDB's estimate, updated every 30 s; presence then includes
the gateway's idle users).

Gateway: its VmRSS once ready, then with 10,000 idle sockets open (read by a task each in
this process, which answers the gateway's pings as a client does). The gateway runs with
its default settings.

Targets (issue 6): worker < 500 MB, gateway < 300 MB.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import aiohttp
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from gochat_streams import topics
from gochat_streams.codecs import encode
from gochat_streams.kafka import producer_kwargs
from gochat_streams.metrics import TABLE_SIZES_INTERVAL_S
from gochat_streams.models import UpstreamMessage, now_ms
from gochat_streams.tables.dedup import mark_key, remember
from gochat_streams.tables.inbox import cursor_key

from .common import WAIT_S, Bench, Clients, Result, Service, raise_open_files, scrape, send_batches, user_state

WORKER_TARGET_MB = 500
GATEWAY_TARGET_MB = 300
GATEWAYS = [f"gw{i}" for i in range(4)]
#: Users checked through the worker's views.
SAMPLE = 20
#: The worker's count of messages it did not deliver again (tables/dedup.py).
DEDUPLICATED = 'gochat_messages_deduplicated_total{where="logic"}'
REPLAY_WAIT_S = 60.0
#: Records buffered per partition before they go out in batches; batches awaited at once.
BUFFER = 5_000
MAX_IN_FLIGHT = 1_000


class Record(NamedTuple):
    key: bytes
    value: bytes


@dataclass(frozen=True)
class Changelog(topics.TopicSpec):
    """A table's changelog topic, configured as Faust declares one."""

    @property
    def config(self) -> dict[str, str]:
        return {"cleanup.policy": "compact", "min.insync.replicas": str(self.min_insync_replicas)}


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()  # compact, as Faust's json codec writes


class ChangelogWriter:
    """Records to given partitions of topics, buffered per partition and sent in record batches."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer
        self.buffers: dict[tuple[str, int], list[Record]] = {}
        self.in_flight: list[asyncio.Future[Any]] = []
        self.records = 0

    async def add(self, topic: str, partition: int, key: str, value: Any) -> None:
        buffer = self.buffers.setdefault((topic, partition), [])
        buffer.append(Record(key.encode(), _json(value)))
        self.records += 1
        if len(buffer) >= BUFFER:
            await self._send(topic, partition)

    async def _send(self, topic: str, partition: int) -> None:
        self.in_flight += await send_batches(self.producer, topic, partition, self.buffers.pop((topic, partition)))
        if len(self.in_flight) > MAX_IN_FLIGHT:  # bounded memory
            await asyncio.gather(*self.in_flight)
            self.in_flight = []

    async def close(self) -> None:
        for topic, partition in list(self.buffers):
            await self._send(topic, partition)
        await asyncio.gather(*self.in_flight)


def _user(i: int) -> str:
    return f"u{i:06d}"


def _mark(j: int) -> tuple[str, str]:
    """Sender and message id of a user's ``j``th mark."""
    return f"s{j:04d}", f"m{j:04d}"


async def _write_state(bench: Bench, users: int, per_user: int) -> int:
    """Presence and marks of ``users`` users into the changelogs; the records written."""
    s = bench.settings
    app_id, partitions = topics.logic_group(s).group_id, topics.user(s).partitions
    presence, inbox = f"{app_id}-presence-changelog", f"{app_id}-inbox-changelog"
    await topics.ensure_topics(s, [*topics.core(s), *(
        Changelog(name, "user_id", "table entry", partitions, s.user_replicas, s.user_retention_ms, s.compression,
                  topics.min_insync_replicas(s, s.user_replicas))
        for name in (presence, inbox))])
    all_partitions = list(range(partitions))
    partitioner = DefaultPartitioner()
    at, ttl_ms = now_ms(), s.dedup_ttl_s * 1000
    producer = AIOKafkaProducer(**{**producer_kwargs(s), "linger_ms": 5, "max_batch_size": 256 * 1024})
    await producer.start()
    try:
        writer = ChangelogWriter(producer)
        for i in range(users):
            user = _user(i)
            partition = partitioner(user.encode(), all_partitions, all_partitions)
            await writer.add(presence, partition, user, {GATEWAYS[i % len(GATEWAYS)]: {f"{i:032x}": at}})
            state: dict[str, Any] = {}
            log = None
            for j in range(per_user):  # inbox seqs start at 1 (agents/delivery.py)
                log = remember(state, user, log, mark_key(user, *_mark(j)), j + 1, at, ttl_ms)
            state[cursor_key(user)] = {"next": per_user + 1, "floor": per_user + 1, "log": log}  # all acknowledged
            for key, value in state.items():
                await writer.add(inbox, partition, key, value)
        await writer.close()
        return writer.records
    finally:
        await producer.stop()


def _sample(users: int) -> list[str]:
    return [_user(i) for i in range(0, users, max(1, users // SAMPLE))][:SAMPLE]


async def _verify(worker: Service, sample: list[str], per_user: int) -> int:
    """How many of ``sample`` the worker's views show online, with all their marks."""
    ok = 0
    async with aiohttp.ClientSession() as session:
        for n, user in enumerate(sample):
            state = await user_state(session, worker, user)
            sender, message_id = _mark(n % per_user)
            async with session.get(f"{worker.url}/users/{user}/delivered/{sender}/{message_id}/",
                                   headers=worker.headers) as response:
                delivered = (await response.json()).get("delivered")
            ok += len(state["connections"]) == 1 and state["delivered"]["count"] == per_user and delivered is True
    return ok


async def _replay(bench: Bench, worker: Service, sample: list[str], per_user: int) -> int:
    """Send each of ``sample`` one of its marked messages again; how many ``deliver`` drops as copies.

    The views find a key on any partition; ``deliver`` reads the partition of the event it
    handles, so this is what shows that the marks were written where Faust would have."""
    s = bench.settings
    before = (await scrape(worker)).get(DEDUPLICATED, 0.0)
    producer = AIOKafkaProducer(**producer_kwargs(s))
    await producer.start()
    try:
        for n, user in enumerate(sample):
            sender, message_id = _mark(n % per_user)
            message = UpstreamMessage(message_id=message_id, from_user_id=sender, to_user_id=user,
                                      conversation_id=f"c_{sender}_{user}", content="again", message_type="text",
                                      metadata={}, gateway_id=GATEWAYS[0], timestamp=now_ms())
            await producer.send_and_wait(topics.upstream(s).name, encode(message), key=sender.encode())
    finally:
        await producer.stop()
    deadline = time.monotonic() + REPLAY_WAIT_S
    while (dropped := int((await scrape(worker)).get(DEDUPLICATED, 0.0) - before)) < len(sample):
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    return dropped


def _keys(metrics: dict[str, float], table: str) -> int | None:
    value = metrics.get(f'gochat_table_keys{{table="{table}"}}')
    return None if value is None else int(value)


async def _gateway(bench: Bench, sockets: int) -> dict[str, Any]:
    gateway = bench.start_gateway("gw-idle")
    before = gateway.memory_mb()
    async with Clients() as clients, aiohttp.ClientSession() as session:
        await clients.connect([gateway], [f"idle{i:06d}" for i in range(sockets)])

        async def held() -> int:
            async with session.get(f"{gateway.url}/healthz") as response:
                return int((await response.json())["connections"])

        async with asyncio.timeout(WAIT_S):
            while await held() < sockets:
                await asyncio.sleep(0.2)
        await asyncio.sleep(2)  # the presence changes of the last connects are published
        rss = gateway.memory_mb()
        connected = await held()
    return {"scenario": "memory", "process": "gateway", "sockets": sockets, "connected": connected,
            "lost": sockets - connected, "rss_before_mb": before, "rss_mb": rss,
            "kb_per_socket": round((rss - before) * 1024 / max(1, sockets), 1), "peak_mb": gateway.memory_mb("VmHWM"),
            "target_mb": GATEWAY_TARGET_MB, "meets_target": rss < GATEWAY_TARGET_MB}


async def run_memory(bench: Bench, users: int, marks: int, sockets: int) -> Result:
    raise_open_files(sockets + 1_000)  # before any process starts: the gateway inherits it
    bench.serve_clients()
    per_user = max(1, marks // users)
    records = await _write_state(bench, users, per_user)
    spawned = time.monotonic()
    worker = bench.start_worker("logic")
    ready = time.monotonic()
    sample = _sample(users)
    verified = await _verify(worker, sample, per_user)
    worker_rss, worker_peak = worker.memory_mb(), worker.memory_mb("VmHWM")
    deduplicated = await _replay(bench, worker, sample, per_user)
    gateway = await _gateway(bench, sockets)
    # gochat_table_keys is set every TABLE_SIZES_INTERVAL_S: wait for a tick after recovery.
    await asyncio.sleep(max(0.0, ready + TABLE_SIZES_INTERVAL_S + 2 - time.monotonic()))
    keys = await scrape(worker)
    checked = len(sample)
    worker_row = {
        "scenario": "memory", "process": "logic worker", "users": users, "marks": per_user * users,
        "records": records, "ready_s": round(ready - spawned, 1), "checked": checked, "verified": verified,
        "replayed": checked, "deduplicated": deduplicated,
        "lost": (checked - verified) + (checked - deduplicated),  # state the worker does not have where it should
        "presence_keys": _keys(keys, "presence"), "inbox_keys": _keys(keys, "inbox"),
        "rss_mb": worker_rss, "peak_mb": worker_peak, "target_mb": WORKER_TARGET_MB,
        "meets_target": worker_rss < WORKER_TARGET_MB,
    }
    return Result([worker_row, gateway], {"marks_per_user": per_user, "sample": sample})
