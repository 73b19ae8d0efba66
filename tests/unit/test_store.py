"""The message store against real databases: a SQLite file and a throwaway PostgreSQL server."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gochat_streams.content_crypto import ContentKeyring, open_message, reencrypt, seal_content
from gochat_streams.models.common import now_ms
from gochat_streams.models.tasks import MembershipChange, PersistMessagePayload
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
        # A locale's collation, as production databases have (ICU, as the OS may have no
        # locales): code-point order, which single chats' ids are built with, differs.
        await admin.execute(f"""CREATE DATABASE "{name}" TEMPLATE template0
            LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C'""")
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


def group(message_id: str, action: str, members: list[str], ts: int,
          membership: MembershipChange | None = None) -> PersistMessagePayload:
    return message(
        message_id, conversation_id="grp_1", from_user_id="alice", to_user_id=None, content=action,
        message_type="system_group", timestamp=ts, membership=membership,
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


async def test_recent_returns_newest_oldest_first_in_the_order_stored(store: MessageStore) -> None:
    metadata = {"format": "markdown", "extra": {"tags": ["a", "ü"], "depth": {"n": 1, "ok": True, "none": None}}}
    t = 1_700_000_000_000
    await store.save([
        message("m_a", timestamp=t + 1),
        message("m_b", timestamp=t + 9),
        # A client sets its timestamp: one in the past does not move a message back in history.
        message("m_c", timestamp=t - 500, content="你好", metadata=metadata),
        message("other", conversation_id="conv_other", timestamp=t + 9),
    ])
    await store.save([message("m_d", timestamp=t + 2)])
    newest = await store.recent("conv_ab", 3)
    assert [(m.message_id, m.timestamp) for m in newest] == [("m_b", t + 9), ("m_c", t - 500), ("m_d", t + 2)]
    assert [m.seq for m in newest] == sorted(m.seq for m in newest)
    c = newest[1]
    assert (c.content, c.metadata, c.message_type) == ("你好", metadata, "text")
    assert (c.from_user_id, c.to_user_id, c.conversation_id, c.version) == ("alice", "bob", "conv_ab", "1.0")
    assert [m.message_id for m in await store.recent("conv_ab", 100)] == ["m_a", "m_b", "m_c", "m_d"]
    assert [m.message_id for m in await store.recent("conv_ab", 100, since_seq=c.seq)] == ["m_c", "m_d"]
    assert await store.recent("conv_none", 10) == []


async def test_unstamped_message_is_sent_when_stored(store: MessageStore) -> None:
    before = now_ms()
    await store.save([message("msg_1", timestamp=None)])
    (m,) = await store.recent("conv_ab", 1)
    assert before <= m.timestamp <= now_ms()


async def test_a_message_id_is_unique_per_sender(store: MessageStore) -> None:
    alice = message("same_id", conversation_id="alice:bob", content="from alice")
    carol = message("same_id", conversation_id="bob:carol", from_user_id="carol", content="from carol")
    assert await store.save([alice]) == ["alice:bob"]
    assert await store.save([carol, alice]) == ["bob:carol"]
    assert await store.save([carol]) == []
    assert await store.count("same_id") == 2
    assert [m.content for m in await store.recent("bob:carol", 10)] == ["from carol"]
    assert [m.content for m in await store.recent("alice:bob", 10)] == ["from alice"]


def change(added: list[str] | None = None, removed: list[str] | None = None) -> MembershipChange:
    return MembershipChange(added=added or [], removed=removed or [])


async def test_readers_are_the_pair_and_the_members_the_logic_service_decided(store: MessageStore) -> None:
    async def readers(conversation_id: str, *user_ids: str) -> dict[str, int]:
        return {u: since for u in user_ids if (since := await store.reader_since(conversation_id, u)) is not None}

    # A single chat's readers are its id's two users, with or without stored messages.
    assert await readers("alice:bob", "alice", "bob", "carol") == {"alice": 0, "bob": 0}
    assert await readers("bob:alice", "alice", "bob") == {}

    everyone = ("alice", "bob", "carol", "dave", "erin")
    create = group("g_1", "create", ["alice", "bob", "carol"], 1, change(["alice", "bob", "carol"]))
    assert await store.save([create]) == ["grp_1"]
    (created,) = await store.recent("grp_1", 1)
    assert await readers("grp_1", *everyone) == {"alice": created.seq, "bob": created.seq, "carol": created.seq}
    # The store applies what it is given, not what action names say.
    await store.save([group("g_2", "invite", ["carol"], 2, change(["dave"])),
                      group("g_3", "kick", ["dave"], 3, change(removed=["bob"])),
                      group("g_4", "leave", [], 4, change(removed=["carol"]))])
    (invited, *_) = await store.recent("grp_1", 3)
    assert await readers("grp_1", *everyone) == {"alice": created.seq, "dave": invited.seq}

    # Bob rejoins and reads from his rejoining on; the old kick, redelivered, does not remove him.
    await store.save([group("g_5", "invite", ["bob"], 5, change(["bob"]))])
    (rejoined,) = await store.recent("grp_1", 1)
    assert await store.save([group("g_3", "kick", ["bob"], 3, change(removed=["bob"]))]) == []
    assert await readers("grp_1", *everyone) == {"alice": created.seq, "bob": rejoined.seq, "dave": invited.seq}
    # Ordinary messages change nothing, whatever they name.
    await store.save([message("g_text", conversation_id="grp_1", to_user_id=None, from_user_id="erin"),
                      message("dm", conversation_id="grp_1", from_user_id="erin", to_user_id="alice")])
    assert await readers("grp_1", *everyone) == {"alice": created.seq, "bob": rejoined.seq, "dave": invited.seq}

    await store.save([group("g_6", "dismiss", [], 6, change(removed=["alice", "bob", "dave"]))])
    assert await readers("grp_1", *everyone) == {}
    assert [m.message_id for m in await store.recent("grp_1", 10)][:2] == ["g_1", "g_2"]


#: The first schema, as the code before per-sender uniqueness created it (store/base.py at 6529e7f).
FIRST_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS messages (
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
#: What the first schema's store held after: a group g1 (john creates with alice and bob,
#: invites carol, kicks bob); alice and bob chatting under the id the demo page built;
#: mallory's direct messages naming alice and bob's chat and the group (which made her a
#: "member" of both); mallory's group named like a pair; a chat under a client's own id.
FIRST_ROWS = [
    # message_id, conversation_id, from, to, type, metadata, sent_at, stored_at
    ("g-create", "g1", "john", None, "system_group",
     {"action": "create", "group_id": "g1", "member_ids": ["john", "alice", "bob"]}, 10, 100),
    ("ab-1", "alice:bob", "alice", "bob", "text", {}, 11, 101),
    ("ab-2", "alice:bob", "bob", "alice", "text", {}, 12, 102),
    ("evil-1", "alice:bob", "mallory", "bob", "text", {}, 13, 103),
    ("evil-2", "g1", "mallory", "alice", "text", {}, 14, 104),
    ("g-hello", "g1", "john", None, "text", {}, 15, 105),
    ("g-invite", "g1", "john", None, "system_group",
     {"action": "invite", "group_id": "g1", "invitee_id": "carol", "member_ids": ["carol"]}, 16, 106),
    ("g-kick", "g1", "john", None, "system_group",
     {"action": "kick", "group_id": "g1", "invitee_id": "bob", "member_ids": ["bob"]}, 17, 107),
    ("fake-create", "alice:bob", "mallory", None, "system_group",
     {"action": "create", "group_id": "alice:bob", "member_ids": ["mallory"]}, 18, 108),
    ("fake-hello", "alice:bob", "mallory", None, "text", {}, 19, 109),
    ("own-id", "c_own", "dave", "erin", "text", {}, 20, 110),
    # Sorted by code point, as Python sorts: "Zed" before "alice" (a locale's order differs).
    ("cased", "c_cased", "alice", "Zed", "text", {}, 21, 111),
]
FIRST_MEMBERS = [("g1", "john"), ("g1", "alice"), ("g1", "carol"), ("alice:bob", "alice"), ("alice:bob", "bob"),
                 ("alice:bob", "mallory"), ("g1", "mallory"), ("c_own", "dave"), ("c_own", "erin")]


async def _first_schema_store(store_url: str) -> None:
    if store_url.startswith("sqlite:///"):
        path = Path(store_url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True)
        db = sqlite3.connect(path)
        for statement in FIRST_SCHEMA:
            db.execute(statement.format(json_type="TEXT"))
        db.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?, 'x', ?, ?, ?)",
                       [(*r[:5], json.dumps(r[5]), *r[6:]) for r in FIRST_ROWS])
        db.executemany("INSERT INTO conversation_members VALUES (?, ?)", FIRST_MEMBERS)
        db.commit()
        db.close()
        return
    con = await asyncpg.connect(store_url)
    try:
        for statement in FIRST_SCHEMA:
            await con.execute(statement.format(json_type="JSONB"))
        await con.executemany("INSERT INTO messages VALUES ($1, $2, $3, $4, $5, 'x', $6, $7, $8)",
                              [(*r[:5], json.dumps(r[5]), *r[6:]) for r in FIRST_ROWS])
        await con.executemany("INSERT INTO conversation_members VALUES ($1, $2)", FIRST_MEMBERS)
    finally:
        await con.close()


async def test_a_store_of_the_first_schema_is_migrated_on_open(store_url: str) -> None:
    await _first_schema_store(store_url)
    for _ in range(2):  # a second open finds nothing left to migrate
        store = await open_store(store_url)
        try:
            # Single chats moved to their pair's id; nothing else is under a pair's id.
            assert [m.message_id for m in await store.recent("alice:bob", 10)] == ["ab-1", "ab-2"]
            assert [m.message_id for m in await store.recent("bob:mallory", 10)] == ["evil-1"]
            assert [m.message_id for m in await store.recent("alice:mallory", 10)] == ["evil-2"]
            assert [m.message_id for m in await store.recent("dave:erin", 10)] == ["own-id"]
            assert [m.message_id for m in await store.recent("Zed:alice", 10)] == ["cased"]
            assert [m.message_id for m in await store.recent("g1", 10)] == ["g-create", "g-hello", "g-invite",
                                                                           "g-kick"]
            for gone in ("fake-create", "fake-hello"):
                assert await store.count(gone) == 0
            # Group members rebuilt from the system messages alone, each from their joining on.
            create, _, invite, _ = await store.recent("g1", 10)
            readers = {u: await store.reader_since("g1", u) for u in ("john", "alice", "bob", "carol", "mallory")}
            assert readers == {"john": create.seq, "alice": create.seq, "bob": None, "carol": invite.seq,
                               "mallory": None}
            assert await store.reader_since("alice:bob", "mallory") is None
            assert await store.reader_since("c_own", "dave") is None
            # The new uniqueness holds: another sender may reuse an id.
            await store.save([message("ab-1", conversation_id="carol:dave", from_user_id="carol", to_user_id="dave")])
            assert await store.count("ab-1") == 2
        finally:
            await store.close()


async def test_unknown_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="mysql"):
        await open_store("mysql://localhost/db")


async def _raw_dump(store_url: str) -> str:
    """Every byte the database holds for the history: the SQLite files, or PostgreSQL's table as text."""
    if store_url.startswith("sqlite:///"):
        path = Path(store_url.removeprefix("sqlite:///"))
        return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*")).decode("utf-8", "replace")
    con = await asyncpg.connect(store_url)
    try:
        return "\n".join(str(dict(r)) for r in await con.fetch("SELECT * FROM history"))
    finally:
        await con.close()


async def test_reencrypt_seals_all_history_under_the_newest_key_so_the_old_one_can_go(
        store: MessageStore, store_url: str) -> None:
    old = ContentKeyring({"k1": bytes(32)}, "k1")
    rotated = ContentKeyring({"k1": bytes(32), "k2": bytes(range(32))}, "k2")
    retired = ContentKeyring({"k2": bytes(range(32))}, "k2")
    texts = [message(f"m{i}", content=f"secret text {i}") for i in range(5)]
    located = message("loc", message_type="location", content="北京市朝阳区",
                      metadata={"latitude": 39.9042, "longitude": 116.4074})

    def sealed(keys: ContentKeyring, m: PersistMessagePayload) -> PersistMessagePayload:
        return m.model_copy(update={"content": seal_content(keys, m.message_type, m.conversation_id,
                                                            m.from_user_id, m.message_id, m.content, m.metadata),
                                    "metadata": {}})

    # Old messages under k1, one stored in clear (before encryption was on), one under k2 already.
    await store.save([sealed(old, m) for m in texts[:3]] + [texts[3], sealed(rotated, texts[4]), sealed(old, located),
                      group("g", "create", ["alice"], 1)])
    await store.save([sealed(ContentKeyring({"lost": bytes(range(1, 33))}, "lost"), message("orphan"))])
    assert "secret text 3" in await _raw_dump(store_url)

    done = await reencrypt(store, rotated, batch=2)
    assert (done.rewritten, done.current, done.undecryptable) == (5, 1, ["alice/orphan (unknown_key)"])
    assert done.conversations == {"conv_ab"}
    dump = await _raw_dump(store_url)
    assert "secret text" not in dump and "北京" not in dump and "39.9042" not in dump
    stored = await store.recent("conv_ab", 10)
    assert all(m.content.startswith("gcm1.k2.") for m in stored if m.message_id != "orphan")
    # With k1 retired, everything but the orphan still reads, as it was.
    opened = {m.message_id: open_message(retired, m) for m in stored if m.message_id != "orphan"}
    assert [opened[f"m{i}"].content for i in range(5)] == [f"secret text {i}" for i in range(5)]
    assert (opened["loc"].content, opened["loc"].metadata) == (
        "北京市朝阳区", {"latitude": 39.9042, "longitude": 116.4074})
    assert (await reencrypt(store, retired)).rewritten == 0
