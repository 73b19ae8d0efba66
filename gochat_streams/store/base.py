"""What every message store does, written once over a ``fetch(sql, *args) -> rows`` primitive.

SQL is written with PostgreSQL's ``$n`` placeholders; the SQLite backend rewrites them to
SQLite's equivalent ``?n``, so both backends run the same statements.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from ..membership import membership_effect
from ..models.common import now_ms
from ..models.messages import DownstreamMessage
from ..models.tasks import PersistMessagePayload


def schema(json_type: str) -> list[str]:
    return [
        f"""CREATE TABLE IF NOT EXISTS messages (
            message_id TEXT PRIMARY KEY,
            conversation_id TEXT NOT NULL,
            from_user_id TEXT NOT NULL,
            to_user_id TEXT NULL,
            message_type TEXT NOT NULL,
            content TEXT NOT NULL,
            metadata {json_type} NOT NULL,
            sent_at BIGINT NOT NULL,
            stored_at BIGINT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages (conversation_id, sent_at, message_id)",
        """CREATE TABLE IF NOT EXISTS conversation_members (
            conversation_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            PRIMARY KEY (conversation_id, user_id)
        )""",
    ]


_INSERT = """INSERT INTO messages (message_id, conversation_id, from_user_id, to_user_id,
        message_type, content, metadata, sent_at, stored_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
    ON CONFLICT (message_id) DO NOTHING RETURNING message_id"""
_ADD_MEMBER = "INSERT INTO conversation_members VALUES ($1, $2) ON CONFLICT DO NOTHING"
_REMOVE_MEMBER = "DELETE FROM conversation_members WHERE conversation_id = $1 AND user_id = $2"
_CLEAR_MEMBERS = "DELETE FROM conversation_members WHERE conversation_id = $1"
_RECENT = """SELECT message_id, conversation_id, from_user_id, to_user_id, message_type,
        content, metadata, sent_at
    FROM messages WHERE conversation_id = $1
    ORDER BY sent_at DESC, message_id DESC LIMIT $2"""
_IS_MEMBER = "SELECT 1 FROM conversation_members WHERE conversation_id = $1 AND user_id = $2"
_COUNT = "SELECT COUNT(*) FROM messages WHERE message_id = $1"


class Fetch(Protocol):
    """Run one statement, return its rows (none for plain DML); rows are indexable by column name."""

    def __call__(self, sql: str, *args: Any) -> Awaitable[Sequence[Any]]: ...


class MessageStore(ABC):
    """Chat history and the conversation members it implies."""

    @abstractmethod
    def _transaction(self) -> AbstractAsyncContextManager[Fetch]:
        """One transaction: commits on exit, rolls back on an exception."""

    @abstractmethod
    async def _fetch(self, sql: str, *args: Any) -> Sequence[Any]:
        """One statement on its own (reads)."""

    @abstractmethod
    async def close(self) -> None: ...

    async def save(self, messages: Sequence[PersistMessagePayload]) -> list[str]:
        """Insert the messages not stored yet, in one transaction, applying the membership
        effect of each newly inserted one in order; return the conversations that changed."""
        changed: dict[str, None] = {}  # ordered set
        stored_at = now_ms()
        async with self._transaction() as fetch:
            for m in messages:
                inserted = await fetch(
                    _INSERT, m.message_id, m.conversation_id, m.from_user_id, m.to_user_id, m.message_type,
                    m.content, json.dumps(m.metadata, ensure_ascii=False),
                    stored_at if m.timestamp is None else m.timestamp, stored_at,
                )
                # A redelivered task must not replay its effect: a re-applied old "invite"
                # would undo a later "kick".
                if not inserted:
                    continue
                changed[m.conversation_id] = None
                effect = membership_effect(m.message_type, m.metadata, m.from_user_id, m.to_user_id)
                if effect.clear:
                    await fetch(_CLEAR_MEMBERS, m.conversation_id)
                for user_id in effect.remove:
                    await fetch(_REMOVE_MEMBER, m.conversation_id, user_id)
                for user_id in effect.add:
                    await fetch(_ADD_MEMBER, m.conversation_id, user_id)
        return list(changed)

    async def recent(self, conversation_id: str, limit: int) -> list[DownstreamMessage]:
        """The conversation's newest ``limit`` messages, oldest first."""
        rows = await self._fetch(_RECENT, conversation_id, limit)
        return [
            DownstreamMessage(
                message_id=r["message_id"], conversation_id=r["conversation_id"],
                from_user_id=r["from_user_id"], to_user_id=r["to_user_id"],
                message_type=r["message_type"], content=r["content"],
                metadata=json.loads(r["metadata"]), timestamp=r["sent_at"],
            )
            for r in reversed(rows)
        ]

    async def is_member(self, conversation_id: str, user_id: str) -> bool:
        return bool(await self._fetch(_IS_MEMBER, conversation_id, user_id))

    async def count(self, message_id: str) -> int:
        """Rows stored with this id: 0 or 1."""
        (row,) = await self._fetch(_COUNT, message_id)
        return int(row[0])
