"""The message store against real databases: a SQLite file and a throwaway PostgreSQL server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gochat_streams.models.common import now_ms
from gochat_streams.models.tasks import PersistMessagePayload
from gochat_streams.store import MessageStore, open_store
from tests.pg import start_postgres


@pytest.fixture(scope="session")
def pg_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    dsn, stop = start_postgres(tmp_path_factory.mktemp("pg"))
    yield dsn
    stop()


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty database per test."""
    if request.param == "sqlite":
        # The parent dir does not exist yet: open_store creates it.
        yield f"sqlite:///{tmp_path / 'data' / 'messages.sqlite3'}"
        return
    dsn: str = request.getfixturevalue("pg_dsn")
    name = f"test_{uuid.uuid4().hex}"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield f"{dsn.rsplit('/', 1)[0]}/{name}"
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[MessageStore]:
    s = await open_store(store_url)
    yield s
    await s.close()


def message(message_id: str, **fields: Any) -> PersistMessagePayload:
    defaults: dict[str, Any] = dict(
        conversation_id="conv_ab", from_user_id="alice", to_user_id="bob",
        content="hi", message_type="text", metadata={}, timestamp=1_700_000_000_000,
    )
    return PersistMessagePayload(message_id=message_id, **(defaults | fields))


def group(message_id: str, action: str, members: list[str], ts: int) -> PersistMessagePayload:
    return message(
        message_id, conversation_id="grp_1", from_user_id="alice", to_user_id=None, content=action,
        message_type="system_group", timestamp=ts,
        metadata={"action": action, "group_id": "grp_1", "member_ids": members},
    )


async def test_persisting_twice_stores_one_row(store: MessageStore, store_url: str) -> None:
    m = message("msg_1")
    assert await store.save([m, m]) == ["conv_ab"]
    assert await store.count("msg_1") == 1
    assert await store.save([m]) == []
    assert await store.save([m, message("msg_2", conversation_id="conv_cd"), m]) == ["conv_cd"]
    assert (await store.count("msg_1"), await store.count("msg_2"), await store.count("nope")) == (1, 1, 0)

    # A second store on the same database (the gateway beside the task worker) sees the
    # committed rows and re-running the schema creation is harmless.
    other = await open_store(store_url)
    try:
        assert [r.message_id for r in await other.recent("conv_ab", 10)] == ["msg_1"]
        assert await other.save([m]) == []
        await store.save([message("msg_3")])
        assert [r.message_id for r in await other.recent("conv_ab", 10)] == ["msg_1", "msg_3"]
    finally:
        await other.close()


async def test_concurrent_saves_on_one_store(store: MessageStore) -> None:
    batches = [[message(f"msg_{i % 10}")] for i in range(30)]
    results = await asyncio.gather(*(store.save(b) for b in batches))
    assert sum(len(r) for r in results) == 10
    assert [await store.count(f"msg_{i}") for i in range(10)] == [1] * 10


async def test_recent_returns_newest_oldest_first(store: MessageStore) -> None:
    metadata = {"format": "markdown", "extra": {"tags": ["a", "ü"], "depth": {"n": 1, "ok": True, "none": None}}}
    t = 1_700_000_000_000
    await store.save([
        message("m_c", timestamp=t + 3, content="你好", metadata=metadata),
        message("m_a", timestamp=t + 1),
        message("m_e", timestamp=t + 3),  # same sent time as m_c: message_id breaks the tie
        message("m_b", timestamp=t + 2),
        message("other", conversation_id="conv_other", timestamp=t + 9),
    ])
    newest = await store.recent("conv_ab", 3)
    assert [(m.message_id, m.timestamp) for m in newest] == [("m_b", t + 2), ("m_c", t + 3), ("m_e", t + 3)]
    c = newest[1]
    assert (c.content, c.metadata, c.message_type) == ("你好", metadata, "text")
    assert (c.from_user_id, c.to_user_id, c.conversation_id, c.version) == ("alice", "bob", "conv_ab", "1.0")
    assert [m.message_id for m in await store.recent("conv_ab", 100)] == ["m_a", "m_b", "m_c", "m_e"]
    assert await store.recent("conv_none", 10) == []


async def test_unstamped_message_is_sent_when_stored(store: MessageStore) -> None:
    before = now_ms()
    await store.save([message("msg_1", timestamp=None)])
    (m,) = await store.recent("conv_ab", 1)
    assert before <= m.timestamp <= now_ms()


async def test_membership_follows_the_messages(store: MessageStore) -> None:
    async def members(conversation_id: str, *user_ids: str) -> list[str]:
        return [u for u in user_ids if await store.is_member(conversation_id, u)]

    await store.save([message("chat_1")])
    assert await members("conv_ab", "alice", "bob", "carol") == ["alice", "bob"]

    everyone = ("alice", "bob", "carol", "dave", "erin")
    assert await store.save([group("g_1", "create", ["alice", "bob", "carol"], 1)]) == ["grp_1"]
    assert await members("grp_1", *everyone) == ["alice", "bob", "carol"]
    kick = group("g_3", "kick", ["bob"], 3)
    await store.save([group("g_2", "invite", ["dave"], 2), kick, group("g_4", "leave", ["carol"], 4)])
    assert await members("grp_1", *everyone) == ["alice", "dave"]

    # Bob is invited back; the old kick, redelivered, must not remove him again.
    await store.save([group("g_5", "invite", ["bob"], 5)])
    assert await store.save([kick]) == []
    assert await members("grp_1", *everyone) == ["alice", "bob", "dave"]
    # Ordinary group messages change nothing.
    await store.save([message("g_text", conversation_id="grp_1", to_user_id=None, from_user_id="erin")])
    assert await members("grp_1", *everyone) == ["alice", "bob", "dave"]

    await store.save([group("g_6", "dismiss", [], 6)])
    assert await members("grp_1", *everyone) == []
    assert await members("conv_ab", "alice", "bob") == ["alice", "bob"]
    assert [m.message_id for m in await store.recent("grp_1", 10)][:2] == ["g_1", "g_2"]


async def test_unknown_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="mysql"):
        await open_store("mysql://localhost/db")
