"""The audit log's hash chain, its verifier and its queue for the broker (gochat_streams/audit.py)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from gochat_streams.audit import GENESIS, AuditLog, Record, event_hash, verify_chains
from gochat_streams.logs import JsonFormatter
from gochat_streams.logs import configure as configure_logging
from gochat_streams.settings import Settings


def _events(producer: str = "gateway-h-1-aa", count: int = 5) -> list[dict[str, Any]]:
    audit = AuditLog("gateway", producer_id=producer)
    return [audit.record(f"u{i}", "login", "/ws", "success", "127.0.0.1", status=200) for i in range(count)]


def _records(events: list[dict[str, Any]], partition: int = 0) -> list[Record]:
    return [Record(partition, offset, e["producer"].encode(), json.dumps(e).encode())
            for offset, e in enumerate(events)]


def test_each_event_links_to_the_hash_of_the_one_before() -> None:
    events = _events()
    assert [e["seq"] for e in events] == [0, 1, 2, 3, 4]
    assert events[0]["prev"] == GENESIS
    for before, after in zip(events, events[1:]):
        assert after["prev"] == before["hash"] == event_hash(before)
    assert {(e["actor"], e["action"], e["target"], e["outcome"], e["source"]) for e in events} == {
        (f"u{i}", "login", "/ws", "success", "127.0.0.1") for i in range(5)}


def test_a_whole_chain_verifies() -> None:
    result = verify_chains(_records(_events("a")) + _records(_events("b"), partition=1))
    assert result.ok
    assert [(c.producer, c.events, c.last_seq, c.broken) for c in result.chains] == [
        ("a", 5, 4, None), ("b", 5, 4, None)]


def test_an_edited_event_is_named() -> None:
    events = _events()
    events[2] = {**events[2], "actor": "someone-else"}
    (chain,) = verify_chains(_records(events)).chains
    assert chain.broken == "at 0:2: seq 2 was edited: its hash does not match its content"
    assert (chain.events, chain.last_seq) == (2, 1)


def test_an_edited_event_with_its_hash_recomputed_breaks_the_next_link() -> None:
    events = _events()
    forged = {**events[2], "outcome": "denied"}
    events[2] = {**forged, "hash": event_hash(forged)}
    (chain,) = verify_chains(_records(events)).chains
    assert chain.broken is not None and chain.broken.startswith("at 0:3: seq 3 does not link to seq 2")


def test_a_deleted_event_is_named() -> None:
    events = _events()
    del events[1]
    (chain,) = verify_chains(_records(events)).chains
    assert chain.broken == "at 0:1: seq 1 missing before seq 2 (deleted)"


def test_a_deleted_first_event_is_named() -> None:
    (chain,) = verify_chains(_records(_events()[2:])).chains
    assert chain.broken == "at 0:0: seq 0-1 missing before seq 2 (deleted)"


def test_reordered_events_are_named() -> None:
    events = _events()
    events[1], events[2] = events[2], events[1]
    (chain,) = verify_chains(_records(events)).chains
    assert chain.broken == "at 0:1: seq 2 comes before seq 1 (reordered)"


def test_an_event_written_twice_is_a_duplicate_not_a_break() -> None:
    events = _events()
    result = verify_chains(_records([*events[:3], events[2], *events[3:]]))
    assert result.ok and result.chains[0].duplicates == 1


def test_an_event_filed_under_another_key_and_a_record_that_is_no_event_fail() -> None:
    events = _events()
    records = _records(events)
    records[3] = Record(0, 3, b"other", records[3].value)
    result = verify_chains([*records, Record(0, 5, b"x", b"not json")])
    assert not result.ok
    assert result.chains[0].broken == "at 0:3: seq 3 is filed under another key than its producer's (moved or forged)"
    assert result.unreadable[0].startswith("0:5: not an audit event")


def test_secrets_and_content_never_reach_an_event_or_its_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gochat.audit")
    event = AuditLog("gateway").record("alice", "login", "/ws", "success", "::1", token="tok-SECRET",
                                       content="the text", password="pw-SECRET", reason="x" * 1000)
    assert (event["actor"], event["action"], event["target"], event["outcome"]) == ("alice", "login", "/ws", "success")
    assert event["details"]["token"] == event["details"]["content"] == event["details"]["password"] == "[redacted]"
    assert len(event["details"]["reason"]) == 300
    (line,) = [r.getMessage() for r in caplog.records if r.name == "gochat.audit"]
    assert json.loads(line) == event
    for secret in ("tok-SECRET", "the text", "pw-SECRET"):
        assert secret not in line


async def test_events_wait_for_the_broker_and_reach_it_in_chain_order() -> None:
    written: list[bytes] = []
    failures = 4  # the whole first attempt: the four events queued by then

    async def send(key: bytes, value: bytes) -> asyncio.Future[None]:
        nonlocal failures
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if failures:
            failures -= 1
            done.set_exception(ConnectionError("broker down"))
        else:
            written.append(value)
            done.set_result(None)
        return done

    audit = AuditLog("gateway", producer_id="p")
    audit.record("a", "login", "/ws", "success", "::1")
    audit.start(send)
    for i in range(3):
        audit.record(f"b{i}", "login", "/ws", "denied", "::1")
    await audit.close(timeout_s=10)
    assert audit.pending == 0
    events = [json.loads(v) for v in written]
    assert [e["seq"] for e in events] == [0, 1, 2, 3]
    assert verify_chains(_records(events)).ok


async def test_a_full_queue_leaves_events_out_of_the_chain_and_the_chain_says_how_many() -> None:
    audit = AuditLog("gateway", buffer_max=2, producer_id="p")
    kept = [audit.record(f"u{i}", "login", "/ws", "success", "::1") for i in range(5)]
    assert [e is not None for e in kept] == [True, True, False, False, False]
    written: list[bytes] = []

    async def send(key: bytes, value: bytes) -> asyncio.Future[None]:
        written.append(value)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    audit.start(send)
    while audit.pending:
        await asyncio.sleep(0.01)
    audit.record("u5", "login", "/ws", "success", "::1")
    await audit.close(timeout_s=10)
    events = [json.loads(v) for v in written]
    assert [(e["seq"], e["action"], e["details"]) for e in events[2:]] == [
        (2, "audit.unchained", {"count": 3}), (3, "login", {})]
    assert verify_chains(_records(events)).ok


def test_audit_lines_are_kept_at_a_warning_log_level_and_nest_in_json_logs(caplog: pytest.LogCaptureFixture) -> None:
    root = logging.getLogger()
    level = root.level
    try:
        configure_logging(Settings(log_level="WARNING"))
        AuditLog("gateway").record("alice", "login", "/ws", "success", "::1")
    finally:
        root.setLevel(level)
    (record,) = [r for r in caplog.records if r.name == "gochat.audit"]
    line = json.loads(JsonFormatter().format(record))
    assert (line["audit"]["actor"], line["audit"]["action"], line["audit"]["seq"]) == ("alice", "login", 0)
