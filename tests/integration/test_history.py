"""``GET /history`` when Redis, its cache, is gone: the store answers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gochat_streams.devstack import Stack, free_port

from .conftest import WAIT_S, Cluster, history

pytestmark = pytest.mark.integration


async def _ids_once_stored(base_url: str, last_id: str) -> list[str]:
    async with asyncio.timeout(WAIT_S):
        while True:
            status, body = await history(base_url, "bob", "alice:bob")
            assert status == 200, body
            ids = [m["message_id"] for m in body["messages"]]
            if last_id in ids:
                return ids
            await asyncio.sleep(0.2)


async def test_history_reads_the_store_when_redis_is_down(cluster: Cluster, connect: Any) -> None:
    cluster.start_worker()
    # The history cache's Redis is one of its own, to be stopped without the rest of the
    # suite's: the gateway's, which fills it, and the task worker's, which invalidates it.
    redis = Stack(cluster.root / "history-redis")
    try:
        cluster.env["GOCHAT_REDIS_URL"] = redis.start_redis(free_port())
        cluster.start_task_worker()
        gw = cluster.start_gateway("gw1")
        alice, bob = await connect(gw, "alice"), await connect(gw, "bob")
        # Bob opens the chat first: the empty list is cached until a stored message drops it.
        status, body = await history(gw, "bob", "alice:bob")
        assert (status, body["messages"]) == (200, [])
        await alice.send("before", "bob")
        assert [m["message_id"] for m in await bob.messages(1, ack=True)] == ["before"]
        assert await _ids_once_stored(gw, "before") == ["before"]  # now cached

        redis.stop()
        await alice.send("after", "bob")
        assert [m["message_id"] for m in await bob.messages(1, ack=True)] == ["after"]
        assert await _ids_once_stored(gw, "after") == ["before", "after"]
        assert (await history(gw, "mallory", "alice:bob"))[0] == 403
        cluster.wait_for_log("gateway-gw1", "history cache unavailable")
    finally:
        redis.stop()
