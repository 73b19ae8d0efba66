"""The delivered marks of tables/dedup.py, on a plain dict standing in for the inbox table."""

from gochat_streams.tables.dedup import CHUNK, Log, delivered_mark, listed, mark_key, marks, remember

TTL = 1000


def test_a_mark_is_found_until_it_expires() -> None:
    table: dict = {}
    key = mark_key("bob", "alice", "m1")
    assert delivered_mark(table, key, 0, TTL) is None
    remember(table, "bob", None, key, 7, 0, TTL)
    assert delivered_mark(table, key, TTL, TTL) == {"at": 0, "seq": 7}
    assert delivered_mark(table, key, TTL + 1, TTL) is None
    # The same id from another sender is another message.
    assert delivered_mark(table, mark_key("bob", "carol", "m1"), 1, TTL) is None


def test_marks_are_sealed_a_chunk_at_a_time_and_only_then_written_apart() -> None:
    table: dict = {}
    log = None
    for i in range(CHUNK + 1):
        log = remember(table, "bob", log, mark_key("bob", "a", f"m{i}"), i, i, TTL)
    assert log == {"first": 0, "end": 1, "recent": [mark_key("bob", "a", f"m{CHUNK}")], "recent_at": CHUNK}
    assert table["bob#0"] == {"last_at": CHUNK - 1, "keys": [mark_key("bob", "a", f"m{i}") for i in range(CHUNK)]}
    assert sorted(k for k in table if "#" in k) == ["bob#0"]
    assert marks(table, "bob", log) == [mark_key("bob", "a", f"m{i}") for i in range(CHUNK + 1)]


def test_expired_marks_are_removed_a_chunk_at_a_time_and_nothing_else() -> None:
    table: dict = {"bob/1": {"message_id": "kept"}}
    bob: Log | None = None
    for i in range(CHUNK * 3):
        bob = remember(table, "bob", bob, mark_key("bob", "a", f"old{i}"), i, i, TTL)
    amy = remember(table, "amy", None, mark_key("amy", "a", "other"), 1, 0, TTL)
    # Later, within the TTL of the newest old marks only.
    now = CHUNK * 2 + TTL
    bob = remember(table, "bob", bob, mark_key("bob", "a", "new"), 99, now, TTL)
    kept = [key.split("/")[-1] for key in marks(table, "bob", bob)]
    # Chunks 0 and 1 ended before now - TTL; chunk 2 (old64..old95) did not.
    assert kept == [f"old{i}" for i in range(CHUNK * 2, CHUNK * 3)] + ["new"]
    assert marks(table, "amy", amy) == [mark_key("amy", "a", "other")]
    assert sorted(k for k in table if k.startswith("bob#")) == ["bob#2"]
    assert (bob["first"], bob["end"]) == (2, 3)
    assert table["bob/1"] == {"message_id": "kept"}  # an inbox entry is not a mark


def test_everything_expired_starts_afresh() -> None:
    table: dict = {}
    log = remember(table, "bob", None, "bob/a/k1", 1, 0, TTL)
    log = remember(table, "bob", log, "bob/a/k2", 2, 5 * TTL, TTL)
    assert table == {"bob/a/k2": {"at": 5 * TTL, "seq": 2}}
    assert log == {"first": 0, "end": 0, "recent": ["bob/a/k2"], "recent_at": 5 * TTL}


def test_a_chunk_removed_by_a_killed_worker_does_not_stop_expiry() -> None:
    table: dict = {}
    log = None
    for i in range(CHUNK * 2):
        log = remember(table, "bob", log, mark_key("bob", "a", f"m{i}"), i, 0, TTL)
    # Killed after removing chunk 0 and its marks, before writing the cursor that says so.
    for key in table.pop("bob#0")["keys"]:
        del table[key]
    log = remember(table, "bob", log, "bob/a/new", 99, 2 * TTL, TTL)
    assert list(table) == ["bob/a/new"]  # chunk 1 and its marks went too
    assert (log["first"], log["end"]) == (2, 2)


def test_a_mark_listed_again_is_listed_once() -> None:
    table: dict = {}
    log = remember(table, "bob", None, "bob/a/k1", 1, 0, TTL)
    # What agents/delivery.py does when a crash left the mark without its cursor.
    log = listed(table, "bob", log, "bob/a/k1", 1, TTL)
    assert marks(table, "bob", log) == ["bob/a/k1"]
