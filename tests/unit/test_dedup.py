"""The delivered marks of tables/dedup.py, on a plain dict standing in for the inbox table."""

from gochat_streams.tables.dedup import CHUNK, delivered_mark, mark_key, marks, remember

TTL = 1000


def test_a_mark_is_found_until_it_expires() -> None:
    table: dict = {}
    key = mark_key("bob", "alice", "m1")
    assert delivered_mark(table, key, 0, TTL) is None
    remember(table, "bob", key, 7, 0, TTL)
    assert delivered_mark(table, key, TTL, TTL) == {"at": 0, "seq": 7}
    assert delivered_mark(table, key, TTL + 1, TTL) is None
    # The same id from another sender is another message.
    assert delivered_mark(table, mark_key("bob", "carol", "m1"), 1, TTL) is None


def test_expired_marks_are_removed_a_chunk_at_a_time_and_nothing_else() -> None:
    table: dict = {"bob/1": {"message_id": "kept"}}
    for i in range(CHUNK * 3):
        remember(table, "bob", mark_key("bob", "a", f"old{i}"), i, i, TTL)
    remember(table, "amy", mark_key("amy", "a", "other"), 1, 0, TTL)
    # Later, within the TTL of the newest old marks only.
    now = CHUNK * 2 + TTL
    remember(table, "bob", mark_key("bob", "a", "new"), 99, now, TTL)
    kept = [key.split("/")[-1] for key in marks(table, "bob")]
    # Chunks 0 and 1 ended before now - TTL; chunk 2 (old64..old95) did not.
    assert kept == [f"old{i}" for i in range(CHUNK * 2, CHUNK * 3)] + ["new"]
    assert marks(table, "amy") == [mark_key("amy", "a", "other")]
    assert sorted(k for k in table if k.startswith("bob#")) == ["bob#", "bob#2", "bob#3"]
    assert table["bob#"] == {"first": 2, "last": 3}
    assert table["bob/1"] == {"message_id": "kept"}  # an inbox entry is not a mark


def test_everything_expired_starts_a_fresh_chunk() -> None:
    table: dict = {}
    remember(table, "bob", "bob/a/k1", 1, 0, TTL)
    remember(table, "bob", "bob/a/k2", 2, 5 * TTL, TTL)
    assert table == {
        "bob/a/k2": {"at": 5 * TTL, "seq": 2},
        "bob#": {"first": 1, "last": 1},
        "bob#1": {"last_at": 5 * TTL, "keys": ["bob/a/k2"]},
    }


def test_a_mark_remembered_twice_is_listed_once() -> None:
    table: dict = {}
    remember(table, "bob", "bob/a/k1", 1, 0, TTL)
    remember(table, "bob", "bob/a/k1", 1, 1, TTL)
    assert marks(table, "bob") == ["bob/a/k1"]
