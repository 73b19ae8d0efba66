"""Message content encryption end to end (content_crypto.py, README "Content encryption").

Every kind of user message, in a single chat, a group fanned out through tasks and to an
offline user, reaches its recipients in clear and in order, while nothing that stores or
carries it holds its plaintext: every topic of the test's namespace (changelogs and dead
letters included), the SQLite store, Redis, the push outbox, every process's log. Then a
rotation, a reencryption and the old key's retirement, each read back live and through
/history; and a message under the retired key, which fails alone, counted.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer
from redis.asyncio import Redis

from gochat_streams import topics
from gochat_streams.content_crypto import ContentKeyring, key_id_of, read_key_file, seal
from gochat_streams.kafka import client_kwargs, partitions_of
from gochat_streams.models import UpstreamMessage
from gochat_streams.store import open_store

from .conftest import WAIT_S, Client, Cluster, history, produce

pytestmark = pytest.mark.integration

#: In every plaintext of this test; the scans look for it, and for each coordinate.
MARK = f"plain{uuid.uuid4().hex[:8]}"
KINDS = ("text", "image", "file", "location")


def _body(kind: str, n: int) -> dict[str, Any]:
    """Message ``n`` of a kind: each carries the mark in its content and metadata, a location its own coordinates."""
    if kind == "text":
        return {"message_type": "text", "content": f"{MARK} says {n} 你好", "metadata": {"format": "plain"}}
    if kind == "image":
        return {"message_type": "image", "content": f"https://img.example/{MARK}/{n}.jpg",
                "metadata": {"width": 800, "height": 600, "format": "jpg", "thumbnail": f"https://t/{MARK}-{n}"}}
    if kind == "file":
        return {"message_type": "file", "content": f"https://files.example/{MARK}/{n}.pdf",
                "metadata": {"filename": f"{MARK}-salaries-{n}.pdf", "size": 2048, "mime_type": "application/pdf"}}
    return {"message_type": "location", "content": f"{MARK} 北京市朝阳区 {n}",
            "metadata": {"latitude": _coordinate(n), "longitude": 100 + _coordinate(n), "accuracy": 10}}


def _coordinate(n: int) -> float:
    return float(f"12.{n:04d}4242")


class Sent:
    """What was sent, per conversation in order, and every plaintext to look for."""

    def __init__(self) -> None:
        self.by_conversation: dict[str, list[dict[str, Any]]] = {}
        self.needles: set[str] = {MARK}
        self.n = 0

    async def send(self, client: Client, conversation_id: str, to_user_id: str | None, kind: str) -> str:
        self.n += 1
        message_id = f"{kind}-{self.n:04d}"
        body = _body(kind, self.n)
        if kind == "location":
            self.needles.update({str(body["metadata"]["latitude"]), str(body["metadata"]["longitude"])})
        extra = {} if to_user_id is not None else {"conversation_id": conversation_id}
        await client.send(message_id, to_user_id, body["content"], message_type=body["message_type"],
                          metadata=body["metadata"], **extra)
        self.by_conversation.setdefault(conversation_id, []).append({"message_id": message_id, **body})
        return message_id

    async def each_kind(self, alice: Client, to_bob: int) -> None:
        """Of each kind: ``to_bob`` to bob, one to olive, one to the group."""
        for kind in KINDS:
            for _ in range(to_bob):
                await self.send(alice, "alice:bob", "bob", kind)
            await self.send(alice, "alice:olive", "olive", kind)
            await self.send(alice, "g", None, kind)


def _received(messages: list[dict[str, Any]], conversation_id: str) -> list[dict[str, Any]]:
    """The user messages of a conversation, as they were sent (the group's creation aside)."""
    return [{k: m[k] for k in ("message_id", "message_type", "content", "metadata")}
            for m in messages if m["conversation_id"] == conversation_id and m["message_type"] in KINDS]


def _keys_command(cluster: Cluster, *args: str) -> str:
    """``python -m gochat_streams keys ...`` as an operator runs it; its output."""
    done = subprocess.run([sys.executable, "-m", "gochat_streams", "keys", *args], env={**os.environ, **cluster.env},
                          capture_output=True, text=True, timeout=WAIT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


async def _new_messages(client: Client, ids: list[str], seen: set[str]) -> list[dict[str, Any]]:
    """The messages ``ids``, acknowledged, in the order they arrive; a message ``seen`` before
    comes again when its ack was lost with a killed gateway, and is passed over."""
    wanted, got = set(ids), []
    while wanted:
        [message] = await client.messages(1, ack=True)
        if message["message_id"] in wanted:
            wanted.remove(message["message_id"])
            got.append(message)
        else:
            assert message["message_id"] in seen, message
    seen.update(ids)
    return got


async def _acks(client: Client, count: int) -> None:
    frames = await client.frames(count)
    assert [f["type"] for f in frames] == ["ack"] * count, [f for f in frames if f["type"] != "ack"]


async def _history(base_url: str, user_id: str, conversation_id: str, expected: list[dict[str, Any]]) -> dict[str, Any]:
    """``/history`` once it holds ``expected`` (the task service stores a little after delivery)."""
    async with asyncio.timeout(WAIT_S):
        while True:
            status, body = await history(base_url, user_id, conversation_id)
            if status == 200 and _received(body["messages"], conversation_id) == expected:
                return body
            await asyncio.sleep(0.3)


async def _namespace_bytes(cluster: Cluster) -> bytes:
    """Every record of every topic of the test's namespace, keys, values and headers, dead
    letters' original records decoded: as a consumer reads them, decompressed."""
    s = cluster.settings
    consumer = AIOKafkaConsumer(**client_kwargs(s), group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        names = sorted(t for t in await consumer.topics() if t.startswith(s.namespace))
        tps = await partitions_of(s, names)
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        chunks: list[bytes] = []
        async with asyncio.timeout(WAIT_S):
            while any([await consumer.position(tp) < end for tp, end in ends.items()]):
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for r in records:
                        chunks += [r.key or b"", r.value or b"", *(v for _, v in r.headers)]
                        if r.topic.endswith("-dlq") and r.value:
                            chunks.append(base64.b64decode(json.loads(r.value)["value_b64"]))
    finally:
        await consumer.stop()
    assert any(name.endswith("-changelog") for name in names) and any(name.endswith("-dlq") for name in names)
    return b"\n".join(chunks)


async def _redis_bytes(cluster: Cluster) -> bytes:
    redis = Redis.from_url(cluster.env["GOCHAT_REDIS_URL"])
    try:
        chunks = []
        async for key in redis.scan_iter(match=f"{cluster.settings.namespace}*"):
            kind = (await redis.type(key)).decode()
            assert kind == "string", f"{key!r} is a {kind}: dump it too"
            chunks += [key, await redis.get(key) or b""]
        return b"\n".join(chunks)
    finally:
        await redis.aclose()


async def _undecryptable_count(gateway: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{gateway}/metrics") as response:
        text = await response.text()
    found = re.search(r'^gochat_content_undecryptable_total\{reason="unknown_key",service="gateway"\} (\S+)$', text,
                      re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def test_no_plaintext_leaves_the_gateways_and_keys_rotate_reencrypt_and_retire(
        cluster: Cluster, connect: Any) -> None:
    # Every hop traced, so the logs are checked with traces in them; the group fanned out
    # through group_fanout tasks, so that the task topic carries messages too.
    cluster.env.update({"GOCHAT_TRACE_SAMPLE_RATE": "1", "GOCHAT_SMALL_GROUP_MAX_MEMBERS": "2"})
    cluster.start_worker()
    cluster.start_task_worker()
    gw = cluster.start_gateway("gw1")
    alice, bob = await connect(gw, "alice"), await connect(gw, "bob")
    await alice.group_action("create-g", "g", "create", member_ids=["bob", "olive"])
    assert await alice.next_frame() == {"type": "ack", "message_id": "create-g"}
    assert [m["message_id"] for m in await bob.messages(1, ack=True)] == ["create-g"]

    # Under the first key: to bob (online), to olive (offline: pushed, kept in her inbox), to the group.
    sent = Sent()
    for _ in range(10):
        await sent.each_kind(alice, to_bob=2)
    await _acks(alice, 160)
    got = await bob.messages(120, ack=True)
    bob_seen = {"create-g", *(m["message_id"] for m in got)}
    for conversation_id in ("alice:bob", "g"):
        assert _received(got, conversation_id) == sent.by_conversation[conversation_id]
    olive_pushes = [m["message_id"] for c in ("alice:olive", "g") for m in sent.by_conversation[c]]
    async with asyncio.timeout(WAIT_S):
        while len(pushes := [p for p in cluster.pushes() if p["message_id"] in olive_pushes]) < len(olive_pushes):
            await asyncio.sleep(0.3)
    assert sorted(p["message_id"] for p in pushes) == sorted(olive_pushes)
    texts = {m["message_id"]: m["content"] for c in ("alice:olive", "g") for m in sent.by_conversation[c]}
    # Opened as the webhook opens them: a text's preview is its text; other kinds are named.
    assert {p["content"] for p in pushes if p["message_id"].startswith("text")} == {
        f"alice: {texts[p['message_id']]}" for p in pushes if p["message_id"].startswith("text")}
    assert {p["content"] for p in pushes if p["message_id"].startswith("image")} == {"alice: [图片]"}

    # Rotation: a new key encrypts once the gateway restarts; the old one still opens.
    first_keys, first = read_key_file(Path(cluster.env["GOCHAT_CONTENT_KEYS_FILE"]))
    rotated = _keys_command(cluster, "rotate")
    new = read_key_file(Path(cluster.env["GOCHAT_CONTENT_KEYS_FILE"]))[1]
    assert new is not None and new != first
    cluster.kill_gateway("gw1")
    gw = cluster.start_gateway("gw1")
    alice, bob = await connect(gw, "alice"), await connect(gw, "bob")
    start = {c: len(messages) for c, messages in sent.by_conversation.items()}
    await sent.each_kind(alice, to_bob=3)
    await _acks(alice, 20)
    new_ids = [m["message_id"] for c in ("alice:bob", "g") for m in sent.by_conversation[c][start[c]:]]
    got = await _new_messages(bob, new_ids, bob_seen)
    for conversation_id in ("alice:bob", "g"):
        assert _received(got, conversation_id) == sent.by_conversation[conversation_id][start[conversation_id]:]
    # Olive's inbox holds both keys' messages: her reconnect sync opens them all, in order.
    olive = await connect(gw, "olive")
    got = await olive.messages(1 + len(olive_pushes) + 8, ack=True)  # and the group's creation
    for conversation_id in ("alice:olive", "g"):
        assert _received(got, conversation_id) == sent.by_conversation[conversation_id]
    await _history(gw, "alice", "alice:bob", sent.by_conversation["alice:bob"][-50:])
    await _history(gw, "alice", "g", sent.by_conversation["g"][-49:])

    # Reencrypt, retire the first key, restart: history still reads, all of it under the new key.
    reencrypted = _keys_command(cluster, "reencrypt")
    retired = _keys_command(cluster, "retire", str(first))
    assert set(read_key_file(Path(cluster.env["GOCHAT_CONTENT_KEYS_FILE"]))[0]) == {new}
    cluster.kill_gateway("gw1")
    gw = cluster.start_gateway("gw1")
    alice, bob = await connect(gw, "alice"), await connect(gw, "bob")
    for conversation_id, reader in (("alice:bob", "bob"), ("alice:olive", "olive"), ("g", "bob")):
        expected = sent.by_conversation[conversation_id][-49 if conversation_id == "g" else -50:]
        assert "undecryptable" not in await _history(gw, reader, conversation_id, expected)
    store = await open_store(cluster.settings.message_store_url)
    try:
        stored = [m for c in ("alice:bob", "alice:olive", "g") for m in await store.recent(c, 200)]
    finally:
        await store.close()
    assert {key_id_of(m.content) for m in stored if m.message_type in KINDS} == {new}

    # A message under the retired key fails alone, counted and dead-lettered sealed; the next one arrives.
    s = cluster.settings
    stale = seal(ContentKeyring({str(first): base64.b64decode(first_keys[str(first)])}, str(first)),
                 UpstreamMessage(message_id="stale", from_user_id="alice", to_user_id="bob",
                                 conversation_id="alice:bob", timestamp=1, gateway_id="gw1",
                                 message_type="text", content=f"{MARK} under a retired key"))
    await produce(s, topics.upstream(s).name, [("alice", stale.model_dump_json().encode())])
    cluster.wait_for_log("gateway-gw1", "sealed with content key")
    await sent.send(alice, "alice:bob", "bob", "text")
    await _acks(alice, 1)
    assert _received(await _new_messages(bob, [sent.by_conversation["alice:bob"][-1]["message_id"]], bob_seen),
                     "alice:bob") == sent.by_conversation["alice:bob"][-1:]
    assert await _undecryptable_count(gw) == 1
    sent.needles.add(f"{MARK} under a retired key")

    # Nowhere at rest or in transit: topics, the store's files, Redis, the outbox, the logs.
    places = {
        "topics": await _namespace_bytes(cluster),
        "sqlite": b"".join(p.read_bytes() for p in cluster.root.glob("messages.sqlite3*")),
        "redis": await _redis_bytes(cluster),
        "push outbox": Path(cluster.env["GOCHAT_PUSH_OUTBOX"]).read_bytes(),
        "logs": (cluster.logs() + rotated + reencrypted + retired).encode(),
    }
    assert b"gcm1." in places["topics"] and b"gcm1." in places["redis"] and b"gcm1." in places["push outbox"]
    leaks = {where: sorted(n for n in sent.needles if n.encode() in data) for where, data in places.items()}
    assert leaks == {where: [] for where in places}
