"""The recent-messages cache against a real redis-server on loopback."""

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from gochat_streams.devstack import Stack, free_port
from gochat_streams.history import VERSION_TTL_S, RecentMessages
from gochat_streams.metrics import history_cache_errors
from gochat_streams.models import StoredMessage

CONV = "conv_123"
SIZE = 5
TTL_S = 300


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    stack = Stack(tmp_path_factory.mktemp("redis"))
    try:
        yield stack.start_redis(free_port())
    finally:
        stack.stop()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


def message(n: int, conversation_id: str = CONV) -> StoredMessage:
    # The store's seq is n; the client's timestamps run backwards, and must not matter.
    return StoredMessage(seq=n, message_id=f"msg_{n}", from_user_id="user_123", to_user_id="user_456",
                         conversation_id=conversation_id, content=f"hello {n}", message_type="text",
                         timestamp=1640995200000 - n)


class Store:
    """An in-memory message store; ``gate``, when set up, holds ``recent`` after it has read."""

    def __init__(self) -> None:
        self.messages: dict[str, list[StoredMessage]] = {}
        self.calls: list[tuple[str, int]] = []
        self.gate: asyncio.Event | None = None
        self.loaded = asyncio.Event()

    def add(self, m: StoredMessage) -> None:
        self.messages.setdefault(m.conversation_id, []).append(m)

    async def recent(self, conversation_id: str, limit: int, since_seq: int = 0) -> list[StoredMessage]:
        self.calls.append((conversation_id, limit))
        snapshot = [m for m in self.messages.get(conversation_id, []) if m.seq >= since_seq][-limit:]
        self.loaded.set()
        if self.gate is not None:
            await self.gate.wait()
        return snapshot


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
def cache(redis: Redis, store: Store) -> RecentMessages:
    return RecentMessages(redis, store, namespace=f"t{uuid.uuid4().hex[:10]}.", size=SIZE, ttl_s=TTL_S)


async def test_miss_loads_from_the_store_and_caches(cache: RecentMessages, store: Store, redis: Redis) -> None:
    store.add(message(1))
    store.add(message(2))
    assert await cache.get(CONV, SIZE) == [message(1), message(2)]
    assert store.calls == [(CONV, SIZE)]
    assert await cache.get(CONV, SIZE) == [message(1), message(2)]
    assert store.calls == [(CONV, SIZE)]
    assert await redis.exists(cache.cache_key(CONV)) == 1


async def test_cache_key_has_the_ttl(cache: RecentMessages, store: Store, redis: Redis) -> None:
    store.add(message(1))
    await cache.get(CONV, 1)
    assert 0 < await redis.ttl(cache.cache_key(CONV)) <= TTL_S


async def test_empty_conversation_is_cached_too(cache: RecentMessages, store: Store) -> None:
    assert await cache.get(CONV, 1) == []
    assert await cache.get(CONV, 1) == []
    assert len(store.calls) == 1


async def test_invalidate_makes_the_next_get_reload(cache: RecentMessages, store: Store, redis: Redis) -> None:
    store.add(message(1))
    store.add(message(1, "conv_other"))
    assert await cache.get(CONV, SIZE) == [message(1)]
    assert await cache.get("conv_other", SIZE) == [message(1, "conv_other")]

    store.add(message(2))
    await cache.invalidate([CONV])
    assert await cache.get(CONV, SIZE) == [message(1), message(2)]
    assert store.calls == [(CONV, SIZE), ("conv_other", SIZE), (CONV, SIZE)]
    assert await cache.get("conv_other", SIZE) == [message(1, "conv_other")]  # untouched
    assert len(store.calls) == 3
    assert 0 < await redis.ttl(cache.version_key(CONV)) <= VERSION_TTL_S


async def test_invalidate_of_nothing_is_fine(cache: RecentMessages) -> None:
    await cache.invalidate([])


async def test_limit_below_size_gives_the_newest_oldest_first(cache: RecentMessages, store: Store) -> None:
    for n in range(1, 8):
        store.add(message(n))
    assert await cache.get(CONV, 2) == [message(6), message(7)]  # from the store
    assert await cache.get(CONV, 3) == [message(5), message(6), message(7)]  # from the cache
    assert await cache.get(CONV, SIZE) == [message(n) for n in range(3, 8)]
    assert store.calls == [(CONV, SIZE)]
    with pytest.raises(ValueError):
        await cache.get(CONV, SIZE + 1)
    with pytest.raises(ValueError):
        await cache.get(CONV, 0)


@pytest.mark.parametrize("versioned_before", [False, True], ids=["no-version-yet", "versioned"])
async def test_a_load_that_raced_a_write_is_not_cached(
    cache: RecentMessages, store: Store, redis: Redis, versioned_before: bool,
) -> None:
    store.add(message(1))
    if versioned_before:
        await cache.invalidate([CONV])
    store.gate = asyncio.Event()
    reader = asyncio.create_task(cache.get(CONV, SIZE))
    await store.loaded.wait()  # the reader has read the old list ...

    store.add(message(2))  # ... then the writer stores and invalidates ...
    await cache.invalidate([CONV])
    store.gate.set()  # ... then the reader tries to cache what it read
    assert await reader == [message(1)]

    assert await redis.exists(cache.cache_key(CONV)) == 0
    store.gate = None
    assert await cache.get(CONV, SIZE) == [message(1), message(2)]
    assert len(store.calls) == 2


async def test_an_expired_version_does_not_let_a_racing_load_in(
    cache: RecentMessages, store: Store, redis: Redis,
) -> None:
    # With a counter, the version would restart at the value the reader saw (A-B-A).
    store.add(message(1))
    await cache.invalidate([CONV])
    store.gate = asyncio.Event()
    reader = asyncio.create_task(cache.get(CONV, SIZE))
    await store.loaded.wait()

    await redis.delete(cache.version_key(CONV))  # as if it expired
    store.add(message(2))
    await cache.invalidate([CONV])
    store.gate.set()
    await reader

    assert await redis.exists(cache.cache_key(CONV)) == 0


async def test_a_reader_gets_the_messages_from_their_seq_on(cache: RecentMessages, store: Store) -> None:
    for n in range(1, 8):
        store.add(message(n))
    assert await cache.get(CONV, SIZE, since_seq=6) == [message(6), message(7)]  # from the store
    assert await cache.get(CONV, 1, since_seq=6) == [message(7)]  # from the cache
    assert await cache.get(CONV, SIZE, since_seq=0) == [message(n) for n in range(3, 8)]
    assert await cache.get(CONV, SIZE, since_seq=8) == []
    assert store.calls == [(CONV, SIZE)]


async def test_a_cached_list_of_an_older_release_is_reloaded(cache: RecentMessages, store: Store,
                                                             redis: Redis) -> None:
    store.add(message(1))
    # The first release cached messages without the store's seq: they cannot be filtered.
    await redis.set(cache.cache_key(CONV), b'[' + message(1).to_downstream().model_dump_json().encode() + b']')
    assert await cache.get(CONV, SIZE, since_seq=1) == [message(1)]
    assert store.calls == [(CONV, SIZE)]


async def test_redis_down_serves_from_the_store(tmp_path_factory: pytest.TempPathFactory, store: Store,
                                                caplog: pytest.LogCaptureFixture) -> None:
    stack = Stack(tmp_path_factory.mktemp("redis-down"))
    try:
        client = Redis.from_url(stack.start_redis(free_port()), socket_connect_timeout=1, socket_timeout=1)
        cache = RecentMessages(client, store, namespace="down.", size=SIZE, ttl_s=TTL_S)
        for n in range(1, 4):
            store.add(message(n))
        assert await cache.get(CONV, SIZE) == [message(1), message(2), message(3)]
        stack.stop()  # Redis goes away

        errors = history_cache_errors._value.get()
        store.add(message(4))
        with caplog.at_level(logging.WARNING, logger="gochat_streams.history"):
            assert await cache.get(CONV, 2, since_seq=2) == [message(3), message(4)]
            assert await cache.get(CONV, SIZE, since_seq=4) == [message(4)]
        assert history_cache_errors._value.get() == errors + 2
        assert store.calls[1:] == [(CONV, 2), (CONV, SIZE)]
        assert sum("history cache unavailable" in r.getMessage() for r in caplog.records) == 2
        await client.aclose()
    finally:
        stack.stop()
