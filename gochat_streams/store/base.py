"""What every message store does, written once over a ``fetch(sql, *args) -> rows`` primitive.

SQL is written with PostgreSQL's ``$n`` placeholders; the SQLite backend rewrites them to
SQLite's equivalent ``?n``, so both backends run the same statements.

Two tables: ``history``, every message once per (sender, message_id), numbered by
``seq`` in the order the store received them; and ``history_readers``, who may read a
group's or conversation's history and from which ``seq`` on (their joining). The
readers are a projection of the logic service's decisions: each persisted message
carries the membership change conversations.py decided for it, applied here as given.
A single chat needs no rows: its readers are the two users its conversation id names.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from ..conversations import PAIR_SEPARATOR, single_chat_participants
from ..models.common import now_ms
from ..models.messages import StoredMessage
from ..models.tasks import MembershipChange, PersistMessagePayload


@dataclass(frozen=True)
class Dialect:
    json_type: str
    #: The ``seq`` column: an integer key the database assigns in insertion order, never reused.
    seq_column: str
    #: One row if the table ``$1`` exists.
    table_exists: str
    #: The collation that compares strings by code point, as Python's ``sorted`` does.
    codepoint_collation: str


def schema(dialect: Dialect) -> list[str]:
    return [
        f"""CREATE TABLE IF NOT EXISTS history (
            seq {dialect.seq_column},
            message_id TEXT NOT NULL,
            conversation_id TEXT NOT NULL,
            from_user_id TEXT NOT NULL,
            to_user_id TEXT NULL,
            message_type TEXT NOT NULL,
            content TEXT NOT NULL,
            metadata {dialect.json_type} NOT NULL,
            sent_at BIGINT NOT NULL,
            stored_at BIGINT NOT NULL,
            UNIQUE (from_user_id, message_id)
        )""",
        "CREATE INDEX IF NOT EXISTS history_by_conversation ON history (conversation_id, seq)",
        """CREATE TABLE IF NOT EXISTS history_readers (
            conversation_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            since_seq BIGINT NOT NULL,
            PRIMARY KEY (conversation_id, user_id)
        )""",
    ]


_COLUMNS = "message_id, conversation_id, from_user_id, to_user_id, message_type, content, metadata, sent_at, stored_at"
_INSERT = f"""INSERT INTO history ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
    ON CONFLICT (from_user_id, message_id) DO NOTHING RETURNING seq"""
_ADD_READER = """INSERT INTO history_readers (conversation_id, user_id, since_seq) VALUES ($1, $2, $3)
    ON CONFLICT (conversation_id, user_id) DO NOTHING"""
_REMOVE_READER = "DELETE FROM history_readers WHERE conversation_id = $1 AND user_id = $2"
_RECENT = f"""SELECT seq, {_COLUMNS} FROM history WHERE conversation_id = $1 AND seq >= $2
    ORDER BY seq DESC LIMIT $3"""
_READER_SINCE = "SELECT since_seq FROM history_readers WHERE conversation_id = $1 AND user_id = $2"
_COUNT = "SELECT COUNT(*) FROM history WHERE message_id = $1"
_USER_MESSAGES = f"""SELECT seq, {_COLUMNS} FROM history WHERE seq > $1
    AND message_type IN ('text', 'image', 'file', 'location') ORDER BY seq LIMIT $2"""
_REWRITE = "UPDATE history SET content = $2, metadata = $3 WHERE seq = $1"


class Fetch(Protocol):
    """Run one statement, return its rows (none for plain DML); rows are indexable by column name."""

    def __call__(self, sql: str, *args: Any) -> Awaitable[Sequence[Any]]: ...


async def prepare(fetch: Fetch, dialect: Dialect) -> None:
    """Create the schema if missing and migrate a store of the first schema; idempotent.

    Run in one transaction that no other opener runs at the same time (each backend
    makes sure), so a failed migration leaves the old tables as they were.
    """
    for statement in schema(dialect):
        await fetch(statement)
    if await fetch(dialect.table_exists, "messages"):
        await _migrate_first_schema(fetch, dialect)


async def _migrate_first_schema(fetch: Fetch, dialect: Dialect) -> None:
    """The first schema: ``messages`` keyed by ``message_id`` alone and ``conversation_members``
    filled by replaying messages, where a direct message made its two users members of
    whatever conversation id the client named. Its members are not trusted: they are
    rebuilt from the stored system messages alone, which only the logic service accepted.
    """
    # Single chats move to their canonical id, the one readers are checked against
    # (conversations.single_chat_id, in SQL). Left behind, as nobody may read them under
    # the new rules: group messages under a pair's id (a group named "alice:bob" wrote
    # into alice and bob's chat), and users whose id holds the separator. Numbered in the
    # order they were stored, the order the old membership effects were applied in.
    sep, collate = PAIR_SEPARATOR, dialect.codepoint_collation
    await fetch(f"""INSERT INTO history ({_COLUMNS})
        SELECT message_id,
            CASE WHEN to_user_id IS NULL THEN conversation_id
                 WHEN from_user_id COLLATE {collate} < to_user_id COLLATE {collate}
                     THEN from_user_id || '{sep}' || to_user_id
                 ELSE to_user_id || '{sep}' || from_user_id END,
            from_user_id, to_user_id, message_type, content, metadata, sent_at, stored_at
        FROM messages
        WHERE NOT (to_user_id IS NULL AND conversation_id LIKE '%{sep}%')
            AND from_user_id NOT LIKE '%{sep}%' AND COALESCE(to_user_id, '') NOT LIKE '%{sep}%'
        ORDER BY stored_at, sent_at, message_id""")
    system = await fetch("""SELECT seq, conversation_id, message_type, metadata FROM history
        WHERE to_user_id IS NULL AND message_type IN ('system_group', 'system_conversation') ORDER BY seq""")
    readers: dict[str, dict[str, int]] = {}
    for row in system:
        members = readers.setdefault(row["conversation_id"], {})
        metadata = json.loads(row["metadata"])
        action, member_ids = metadata.get("action"), [str(u) for u in metadata.get("member_ids") or []]
        if action in ("create", "invite", "join"):
            for user_id in member_ids:
                members.setdefault(user_id, row["seq"])
        elif action in ("leave", "kick"):
            for user_id in member_ids:
                members.pop(user_id, None)
        elif action == "dismiss":
            members.clear()
    for conversation_id, members in readers.items():
        for user_id, since_seq in members.items():
            await fetch(_ADD_READER, conversation_id, user_id, since_seq)
    await fetch("DROP TABLE conversation_members")
    await fetch("DROP TABLE messages")


async def _apply_membership(fetch: Fetch, conversation_id: str, change: MembershipChange, seq: int) -> None:
    for user_id in change.removed:
        await fetch(_REMOVE_READER, conversation_id, user_id)
    for user_id in change.added:
        await fetch(_ADD_READER, conversation_id, user_id, seq)


def _stored(r: Any) -> StoredMessage:
    return StoredMessage(
        seq=r["seq"], message_id=r["message_id"], conversation_id=r["conversation_id"],
        from_user_id=r["from_user_id"], to_user_id=r["to_user_id"],
        message_type=r["message_type"], content=r["content"],
        metadata=json.loads(r["metadata"]), timestamp=r["sent_at"],
    )


class MessageStore(ABC):
    """Chat history and who may read it."""

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
        change of each newly inserted one in order; return the conversations that changed."""
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
                if m.membership is not None:
                    await _apply_membership(fetch, m.conversation_id, m.membership, int(inserted[0]["seq"]))
        return list(changed)

    async def recent(self, conversation_id: str, limit: int, since_seq: int = 0) -> list[StoredMessage]:
        """The conversation's newest ``limit`` messages from ``since_seq`` on, oldest first."""
        rows = await self._fetch(_RECENT, conversation_id, since_seq, limit)
        return [_stored(r) for r in reversed(rows)]

    async def user_messages(self, after_seq: int, limit: int) -> list[StoredMessage]:
        """Up to ``limit`` user messages (text, image, file, location) after ``after_seq``, in ``seq`` order:
        the ones whose content is sealed (content_crypto.py)."""
        return [_stored(r) for r in await self._fetch(_USER_MESSAGES, after_seq, limit)]

    async def rewrite(self, messages: Sequence[StoredMessage]) -> None:
        """Replace the content and metadata of these stored messages (by ``seq``), in one transaction."""
        async with self._transaction() as fetch:
            for m in messages:
                await fetch(_REWRITE, m.seq, m.content, json.dumps(m.metadata, ensure_ascii=False))
        await self._purge_replaced()

    async def _purge_replaced(self) -> None:
        """Overwrite, where the backend can, the bytes that rewritten rows held (PostgreSQL keeps
        them in dead tuples until ``VACUUM FULL history``: README, "Content encryption")."""

    async def reader_since(self, conversation_id: str, user_id: str) -> int | None:
        """From which ``seq`` on the user may read the conversation, or None: not at all.

        A single chat's two users read all of it; a group's or conversation's current
        members from their joining on; a removed member nothing.
        """
        pair = single_chat_participants(conversation_id)
        if pair is not None:
            return 0 if user_id in pair else None
        rows = await self._fetch(_READER_SINCE, conversation_id, user_id)
        return int(rows[0]["since_seq"]) if rows else None

    async def count(self, message_id: str) -> int:
        """Rows stored with this id, from any sender."""
        (row,) = await self._fetch(_COUNT, message_id)
        return int(row[0])
