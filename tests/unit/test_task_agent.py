"""The task service's history cache invalidation: a failure never undoes a stored batch; it is retried."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from redis.exceptions import ConnectionError as RedisConnectionError

from gochat_streams.agents.tasks import PendingInvalidations
from gochat_streams.metrics import history_invalidation_failures


class _Cache:
    """Stands for RecentMessages over a Redis that refuses the first ``failures`` invalidations."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.invalidated: list[list[str]] = []
        self.done = asyncio.Event()

    async def invalidate(self, conversation_ids: Sequence[str]) -> None:
        if self.failures:
            self.failures -= 1
            raise RedisConnectionError("Redis is down")
        self.invalidated.append(list(conversation_ids))
        self.done.set()


def _count(stage: str) -> float:
    return history_invalidation_failures.labels(stage)._value.get()


async def test_a_failed_invalidation_does_not_raise_and_is_retried_until_redis_takes_it() -> None:
    cache = _Cache(failures=3)
    pending = PendingInvalidations(cache, ttl_s=300, timeout_s=1, backoff_s=0.01)  # type: ignore[arg-type]
    before = _count("after_store"), _count("retry")
    try:
        await pending.invalidate(["alice:bob", "g1"])  # does not raise
        async with asyncio.timeout(10):
            await cache.done.wait()
        assert cache.invalidated == [["alice:bob", "g1"]]
        assert (_count("after_store") - before[0], _count("retry") - before[1]) == (1, 2)
        # Nothing is left pending: a later success is the only call.
        cache.done.clear()
        await pending.invalidate(["c2"])
        async with asyncio.timeout(10):
            await cache.done.wait()
        assert cache.invalidated == [["alice:bob", "g1"], ["c2"]]
    finally:
        await pending.close()


async def test_invalidations_are_given_up_once_the_cached_lists_have_expired() -> None:
    cache = _Cache(failures=1_000_000)
    pending = PendingInvalidations(cache, ttl_s=0.05, timeout_s=1, backoff_s=0.01)  # type: ignore[arg-type]
    expired = _count("expired")
    try:
        await pending.invalidate(["alice:bob"])
        async with asyncio.timeout(10):
            while _count("expired") == expired:
                await asyncio.sleep(0.01)
        assert _count("expired") - expired == 1 and cache.invalidated == []
        attempts = cache.failures
        await asyncio.sleep(0.1)
        assert cache.failures == attempts  # no more attempts
    finally:
        await pending.close()


class _HangingCache(_Cache):
    """A Redis that takes the connection and never answers the first ``failures`` times."""

    async def invalidate(self, conversation_ids: Sequence[str]) -> None:
        if self.failures:
            self.failures -= 1
            await asyncio.Event().wait()
        await super().invalidate(conversation_ids)


async def test_an_invalidation_redis_does_not_answer_is_given_up_after_the_timeout_and_retried() -> None:
    cache = _HangingCache(failures=2)
    pending = PendingInvalidations(cache, ttl_s=300, timeout_s=0.05, backoff_s=0.01)  # type: ignore[arg-type]
    try:
        await pending.invalidate(["alice:bob"])  # returns: the batch is not held up by the cache
        async with asyncio.timeout(10):
            await cache.done.wait()
        assert cache.invalidated == [["alice:bob"]]
    finally:
        await pending.close()
