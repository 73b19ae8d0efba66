"""The recent-messages cache against a real redis-server on loopback."""

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from gochat_streams.devstack import Stack, free_port
from gochat_streams.history import VERSION_TTL_S, RecentMessages
from gochat_streams.models import DownstreamMessage

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


def message(n: int, conversation_id: str = CONV) -> DownstreamMessage:
    return DownstreamMessage(message_id=f"msg_{n}", from_user_id="user_123", to_user_id="user_456",
                             conversation_id=conversation_id, content=f"hello {n}", message_type="text",
                             timestamp=1640995200000 + n)


class Store:
    """An in-memory message store; ``gate``, when set up, holds ``recent`` after it has read."""

    def __init__(self) -> None:
        self.messages: dict[str, list[DownstreamMessage]] = {}
        self.calls: list[tuple[str, int]] = []
        self.gate: asyncio.Event | None = None
        self.loaded = asyncio.Event()

    def add(self, m: DownstreamMessage) -> None:
        self.messages.setdefault(m.conversation_id, []).append(m)

    async def recent(self, conversation_id: str, limit: int) -> list[DownstreamMessage]:
        self.calls.append((conversation_id, limit))
        snapshot = list(self.messages.get(conversation_id, []))[-limit:]
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
