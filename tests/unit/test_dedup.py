"""The delivered-messages log of tables/dedup.py, on plain dicts."""

from gochat_streams.tables.dedup import CHUNK, already_delivered, delivery_key, remember

TTL = 1000


def test_a_delivered_key_is_seen_until_it_expires() -> None:
    seen: dict = {}
    log: dict = {}
    key = delivery_key("bob", "alice", "m1")
    assert not already_delivered(seen, key, 0, TTL)
    remember(seen, log, "bob", key, 0, TTL)
    assert already_delivered(seen, key, TTL, TTL)
    assert not already_delivered(seen, key, TTL + 1, TTL)
    # The same id from another sender is another message.
    assert not already_delivered(seen, delivery_key("bob", "carol", "m1"), 1, TTL)


def test_expired_keys_are_removed_a_chunk_at_a_time_and_nothing_else() -> None:
    seen: dict = {}
    log: dict = {}
    for i in range(CHUNK * 3):
        remember(seen, log, "bob", delivery_key("bob", "a", f"old{i}"), i, TTL)
    remember(seen, log, "amy", delivery_key("amy", "a", "other"), 0, TTL)
    # Later, within the TTL of the newest old keys only.
    now = CHUNK * 2 + TTL
    remember(seen, log, "bob", delivery_key("bob", "a", "new"), now, TTL)
    kept = {k.split("/")[-1] for k in seen if k.startswith("bob/")}
    # Chunks 0 and 1 ended before now - TTL; chunk 2 (old64..old95) did not.
    assert kept == {f"old{i}" for i in range(CHUNK * 2, CHUNK * 3)} | {"new"}
    assert delivery_key("amy", "a", "other") in seen
    assert sorted(k for k in log if k.startswith("bob#")) == ["bob#", "bob#2", "bob#3"]
    assert log["bob#"] == {"first": 2, "last": 3}


def test_everything_expired_starts_a_fresh_chunk() -> None:
    seen: dict = {}
    log: dict = {}
    remember(seen, log, "bob", "k1", 0, TTL)
    remember(seen, log, "bob", "k2", 5 * TTL, TTL)
    assert seen == {"k2": 5 * TTL}
    assert log == {"bob#": {"first": 1, "last": 1}, "bob#1": {"last_at": 5 * TTL, "keys": ["k2"]}}
