"""Offline delivery and reconnect sync: the inbox, acks, stale routes, idempotent persistence."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from gochat_streams import topics
from gochat_streams.codecs import encode
from gochat_streams.models import PersistMessagePayload, PersistMessageTask
from gochat_streams.store import open_store

from ..pg import start_postgres
from .conftest import WAIT_S, Cluster, consume_all, produce

pytestmark = pytest.mark.integration

SENDERS = {"s1": 34, "s2": 33, "s3": 33}


async def _until(check: Any, timeout: float = WAIT_S) -> Any:
    async with asyncio.timeout(timeout):
        while not (result := check()):
            await asyncio.sleep(0.2)
    return result


async def _connections(base_url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"{base_url}/healthz") as response:
        return (await response.json())["connections"]


async def test_offline_user_gets_everything_once_in_order_after_a_worker_restart(
    cluster: Cluster, connect: Any
) -> None:
    cluster.start_worker()
    cluster.start_task_worker()
    gw = cluster.start_gateway("gw1")
    senders = {name: await connect(gw, name) for name in SENDERS}

    async def send_all(name: str, count: int) -> None:
        for i in range(count):
            await senders[name].send(f"{name}-{i:03d}", "olive", content=f"{name} says {i}")

    await asyncio.gather(*(send_all(name, count) for name, count in SENDERS.items()))
    for name, count in SENDERS.items():
        acks = await senders[name].frames(count)
        assert [a["message_id"] for a in acks] == [f"{name}-{i:03d}" for i in range(count)]
    def olives_pushes() -> list[dict[str, Any]] | None:
        pushes = [p for p in cluster.pushes() if p["user_id"] == "olive"]
        return pushes if len(pushes) >= 100 else None

    pushes = await _until(olives_pushes)
    assert sorted(p["message_id"] for p in pushes) == sorted(f"{n}-{i:03d}" for n, c in SENDERS.items()
                                                            for i in range(c))

    # The inbox lives in changelog-backed tables: a worker that lost its local state
    # rebuilds it from the changelog.
    cluster.stop_worker("w1")
    shutil.rmtree(cluster.root / "w1")
    cluster.start_worker("w1")

    olive = await connect(gw, "olive")
    received = await olive.messages(100, ack=True)
    ids = [m["message_id"] for m in received]
    assert len(set(ids)) == 100
    for name, count in SENDERS.items():
        assert [i for i in ids if i.startswith(name)] == [f"{name}-{i:03d}" for i in range(count)]

    # Acknowledged: the next connect syncs nothing, and the first frame is a new message.
    await olive.ws.close()
    # Once the gateway has dropped the socket, every ack it read is on the broker,
    # ahead of the next connect.
    async with asyncio.timeout(WAIT_S):
        while await _connections(gw) != len(SENDERS):
            await asyncio.sleep(0.1)
    olive = await connect(gw, "olive")
    await senders["s1"].send("after-ack", "olive")
    assert [m["message_id"] for m in await olive.messages(1)] == ["after-ack"]


async def test_a_stale_route_takes_the_offline_path(cluster: Cluster, connect: Any) -> None:
    cluster.start_worker()
    cluster.start_task_worker()
    gw1, gw2 = cluster.start_gateway("gw1"), cluster.start_gateway("gw2")
    alice, sam = await connect(gw1, "alice"), await connect(gw2, "sam")
    await alice.send("while-online", "sam")
    assert [m["message_id"] for m in await sam.messages(1, ack=True)] == ["while-online"]
    s = cluster.settings
    await consume_all(s, [topics.user(s).name], lambda records: any(b'"kind":"ack"' in r.value for r in records))

    # gw2 dies without telling anyone that sam went away, and comes back empty.
    cluster.kill_gateway("gw2")
    cluster.start_gateway("gw2")
    await alice.send("to-the-void", "sam")
    pushes = await _until(lambda: [p for p in cluster.pushes() if p["message_id"] == "to-the-void"])
    assert [p["user_id"] for p in pushes] == ["sam"]

    sam = await connect(gw1, "sam")
    assert [m["message_id"] for m in await sam.messages(1)] == ["to-the-void"]


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, cluster: Cluster) -> Iterator[str]:
    if request.param == "sqlite":
        yield cluster.env["GOCHAT_STORE_URL"]
        return
    dsn, stop = start_postgres(cluster.root)
    try:
        yield dsn
    finally:
        stop()


async def test_persisting_the_same_task_twice_stores_one_row(cluster: Cluster, store_url: str) -> None:
    cluster.env["GOCHAT_STORE_URL"] = store_url
    cluster.start_task_worker()
    s = cluster.settings
    task = PersistMessageTask(
        task_id="persist:twice", timestamp=1,
        payload=PersistMessagePayload(message_id="twice", conversation_id="c1", from_user_id="a", to_user_id="b",
                                      content="once, please", message_type="text", timestamp=1),
    )
    marker = task.model_copy(
        update={"payload": task.payload.model_copy(update={"message_id": "marker", "timestamp": 2})})
    # Message ids are unique per sender: another sender's "twice" is a message of its own.
    other_sender = task.model_copy(update={"payload": task.payload.model_copy(
        update={"from_user_id": "c", "conversation_id": "b:c", "content": "mine"})})
    await produce(s, topics.task(s).name, [("persist_message", encode(task))])
    await produce(s, topics.task(s).name, [("persist_message", encode(task)), ("persist_message", encode(other_sender)),
                                           ("persist_message", encode(marker))])

    store = await open_store(store_url)
    try:
        async with asyncio.timeout(WAIT_S):
            while not await store.count("marker"):
                await asyncio.sleep(0.2)
        assert await store.count("twice") == 2
        assert [m.message_id for m in await store.recent("c1", 10)] == ["twice", "marker"]
        assert [(m.message_id, m.content) for m in await store.recent("b:c", 10)] == [("twice", "mine")]
    finally:
        await store.close()
