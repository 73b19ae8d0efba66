"""A conversation's recent messages, cached in Redis in front of the message store.

Two keys per conversation: ``{namespace}history:{id}`` holds the newest ``size``
messages as a JSON list (oldest first, with a TTL), ``{namespace}history-version:{id}``
a token that every :meth:`RecentMessages.invalidate` replaces. A reader that missed
fills the cache only if the token is still the one it saw before loading from the store,
so a load that raced a write never leaves the pre-write list cached.

The list is the conversation's, not a reader's: each entry carries the store's ``seq``
and every read keeps only the entries from the reader's ``since_seq`` on (a group member
reads from their joining). History is ordered by ``seq``, so what a reader may see is a
suffix of the conversation and the newest ``size`` entries hold its newest ``size``.

Redis is a cache, not a dependency: when it fails, a read is served from the store
(logged, and counted in ``gochat_history_cache_errors_total``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from typing import Protocol

import pydantic
from redis.asyncio import Redis
from redis.exceptions import RedisError

from .metrics import history_cache_errors
from .models import StoredMessage

log = logging.getLogger(__name__)

#: Version tokens outlive any load by far; they expire only so that idle conversations
#: leave nothing behind.
VERSION_TTL_S = 7 * 24 * 60 * 60

_MESSAGES = pydantic.TypeAdapter(list[StoredMessage])

# KEYS: version, cache. ARGV: the version the reader saw ("" for none), the list, the TTL.
_POPULATE = """
local current = redis.call('GET', KEYS[1])
if current == false then current = '' end
if current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
return 1
"""


class MessageSource(Protocol):
    """What the cache needs of the message store."""

    async def recent(self, conversation_id: str, limit: int, since_seq: int = 0) -> list[StoredMessage]:
        """The newest ``limit`` messages of the conversation from ``since_seq`` on, oldest first."""
        ...


class RecentMessages:
    """The newest ``size`` messages per conversation, served from Redis when cached."""

    def __init__(self, redis: Redis, store: MessageSource, *,
                 namespace: str, size: int, ttl_s: int) -> None:
        if size < 1 or ttl_s < 1:
            raise ValueError(f"size and ttl_s must be positive, got {size} and {ttl_s}")
        self.redis = redis
        self.store = store
        self.namespace = namespace
        self.size = size
        self.ttl_s = ttl_s
        self._populate = redis.register_script(_POPULATE)

    def cache_key(self, conversation_id: str) -> str:
        return f"{self.namespace}history:{conversation_id}"

    def version_key(self, conversation_id: str) -> str:
        return f"{self.namespace}history-version:{conversation_id}"

    async def get(self, conversation_id: str, limit: int, since_seq: int = 0) -> list[StoredMessage]:
        """The newest ``limit`` (at most ``size``) messages from ``since_seq`` on, oldest first."""
        if not 1 <= limit <= self.size:
            raise ValueError(f"limit must be between 1 and {self.size}, got {limit}")
        try:
            messages = await self._conversation(conversation_id)
        except RedisError as exc:
            log.warning("history cache unavailable, reading %s from the store: %r", conversation_id, exc)
            history_cache_errors.inc()
            return await self.store.recent(conversation_id, limit, since_seq)
        return [m for m in messages if m.seq >= since_seq][-limit:]

    async def _conversation(self, conversation_id: str) -> list[StoredMessage]:
        """The conversation's newest ``size`` messages, from the cache or loaded into it."""
        cache_key, version_key = self.cache_key(conversation_id), self.version_key(conversation_id)
        cached = await self.redis.get(cache_key)
        if cached is not None:
            try:
                return _MESSAGES.validate_json(cached)
            except pydantic.ValidationError as exc:  # e.g. written by an older release
                log.warning("ignoring unreadable cached history of %s: %s", conversation_id, exc)
        seen = await self.redis.get(version_key)
        messages = await self.store.recent(conversation_id, self.size)
        value = _MESSAGES.dump_json(messages)
        await self._populate(keys=[version_key, cache_key], args=[seen or "", value, self.ttl_s])
        return messages

    async def invalidate(self, conversation_ids: Iterable[str]) -> None:
        """Drop the cached lists; call after new messages of these conversations were stored."""
        # A fresh random token rather than INCR: a counter restarts at 1 once its key has
        # expired, so a reader that saw "3" just before expiry would accept the third
        # write after it (A-B-A) and cache a stale list. Random tokens never repeat; the
        # one case left, a reader that saw no token while a new one is set and expires
        # again, needs a store load longer than VERSION_TTL_S.
        async with self.redis.pipeline(transaction=True) as pipe:
            for conversation_id in conversation_ids:
                pipe.set(self.version_key(conversation_id), uuid.uuid4().hex, ex=VERSION_TTL_S)
                pipe.delete(self.cache_key(conversation_id))
            await pipe.execute()
