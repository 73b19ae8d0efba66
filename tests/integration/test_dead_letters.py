"""Dead letters: bad records never stop a partition; failing tasks are retried, buried, replayed."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

from gochat_streams import topics
from gochat_streams.codecs import decode_dead_letter, encode
from gochat_streams.models import (DeadLetter, Delivery, DownstreamMessage, PersistMessagePayload, PersistMessageTask,
                                   UpstreamMessage)
from gochat_streams.routing import partition_of
from gochat_streams.settings import Settings
from gochat_streams.store import open_store

from ..pg import Postgres
from .conftest import WAIT_S, Cluster, consume_all, produce

pytestmark = pytest.mark.integration

RECIPIENTS = [f"r{i}" for i in range(10)]


def _good(i: int) -> tuple[str, bytes]:
    message = UpstreamMessage(
        message_id=f"good-{i:04d}", from_user_id="sender", to_user_id=RECIPIENTS[i % len(RECIPIENTS)],
        conversation_id="c", content=f"good {i}", message_type="text", timestamp=i, gateway_id="gw1",
    )
    return "sender", encode(message)


def _bad(i: int) -> tuple[str, bytes, str]:
    """One of six kinds of bad record, and the reason it must be dead-lettered with."""
    valid = json.loads(_good(i)[1])
    kinds = [
        (b"\xff\xfe not json", "malformed_json"),
        (json.dumps({**valid, "timestamp": "yesterday"}).encode(), "invalid_schema"),
        (json.dumps({**valid, "message_type": "video"}).encode(), "unknown_type"),
        (json.dumps({**valid, "content": "x" * 10_001}).encode(), "oversize"),
        (json.dumps({k: v for k, v in valid.items() if k != "message_id"}).encode(), "missing_field"),
        (json.dumps({**valid, "message_type": "system_group",
                     "metadata": {"action": "join", "group_id": "g"}}).encode(), "unroutable"),
    ]
    value, reason = kinds[i % len(kinds)]
    return "sender", value, reason


async def test_a_thousand_poison_pills_among_a_thousand_good_messages(cluster: Cluster, connect: Any) -> None:
    cluster.start_worker()
    gw = cluster.start_gateway("gw1")
    clients = {user: await connect(gw, user) for user in RECIPIENTS}
    s = cluster.settings

    records, expected_reasons = [], Counter()
    for i in range(1000):
        records.append(_good(i))
        key, value, reason = _bad(i)
        records.append((key, value))
        expected_reasons[reason] += 1
    await produce(s, topics.upstream(s).name, records)

    # Every good message reaches its recipient, in the order it was sent.
    received = await asyncio.gather(*(clients[u].messages(100, ack=True) for u in RECIPIENTS))
    for user, messages in zip(RECIPIENTS, received):
        assert [m["message_id"] for m in messages] == [f"good-{i:04d}" for i in range(1000)
                                                        if RECIPIENTS[i % len(RECIPIENTS)] == user]

    letters = [json.loads(r.value) for r in await consume_all(
        s, [topics.upstream_dlq(s).name], lambda rs: len(rs) >= 1000)]
    assert len(letters) == 1000
    assert Counter(d["reason"] for d in letters) == expected_reasons
    bad_values = {_bad(i)[1] for i in range(1000)}
    assert all(base64.b64decode(d["value_b64"]) in bad_values for d in letters)
    assert all(d["source_topic"] == topics.upstream(s).name and d["service"] == "logic" for d in letters)
    # (The alert topic also carries rule alerts: these good messages' timestamps are decades old.)
    alerts = await consume_all(s, [topics.alert(s).name], lambda rs: len(_dead_letter_alerts(rs)) >= 1000)
    assert Counter(a["reason"] for a in _dead_letter_alerts(alerts)) == expected_reasons
    # The worker never restarted: one start, no crashed agent.
    log = (cluster.stack.log_dir / "w1.log").read_text(errors="replace")
    assert log.count("[^Worker]: Ready") == 1 and "crashed" not in log.lower()


def _dead_letter_alerts(records: list[Any]) -> list[dict[str, Any]]:
    return [a for a in (json.loads(r.value) for r in records) if a["kind"] == "dead_letter"]


def _dead_letters_cli(cluster: Cluster, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "gochat_streams", "dead-letters", *args],
                          env={**os.environ, **cluster.env}, capture_output=True, text=True, timeout=WAIT_S)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_a_delivery_naming_a_user_of_another_partition_is_buried_and_the_partition_goes_on(
        cluster: Cluster, connect: Any) -> None:
    cluster.start_worker()
    gw = cluster.start_gateway("gw1")
    s = cluster.settings
    alice = await connect(gw, "alice")
    stranger = next(u for u in (f"s{i}" for i in range(100))
                    if partition_of(u, s.user_partitions) != partition_of("alice", s.user_partitions))
    message = {k: v for k, v in json.loads(_good(1)[1]).items() if k != "gateway_id"}
    wrong = Delivery(user_ids=["alice", stranger], message=DownstreamMessage(**message | {"message_id": "wrong"}))
    right = Delivery(user_ids=["alice"], message=DownstreamMessage(**message | {"message_id": "right"}))
    await produce(s, topics.user(s).name, [("alice", encode(wrong)), ("alice", encode(right))])

    # Nobody gets the buried one; the next record of the partition is delivered.
    assert [m["message_id"] for m in await alice.messages(1)] == ["right"]
    [letter] = [decode_dead_letter(r.value) for r in await consume_all(s, [topics.upstream_dlq(s).name], bool)]
    assert (letter.service, letter.source_topic, letter.reason) == ("logic", topics.user(s).name, "wrong_partition")
    assert stranger in letter.detail


async def test_the_dead_letters_command_lists_every_letter_of_every_partition(cluster: Cluster) -> None:
    s = cluster.settings
    await topics.ensure_topics(s, topics.core(s))
    letters = [DeadLetter(service="logic", source_topic=topics.upstream(s).name, partition=0, offset=i, key=f"u{i}",
                          value_b64=base64.b64encode(b"{}").decode(), reason="invalid_schema", detail="",
                          retry_count=0, failed_at=1, value_size=2)
               for i in range(12)]
    # Keyed by user: several partitions of the dead-letter topic.
    sent = await produce(s, topics.upstream_dlq(s).name, [(letter.key or "", encode(letter)) for letter in letters])
    assert len({m.partition for m in sent}) > 1

    listed = [json.loads(line) for line in _dead_letters_cli(cluster).splitlines()]
    assert sorted((d["position"], d["offset"]) for d in listed) == sorted(
        (f"{m.partition}:{m.offset}", letter.offset) for m, letter in zip(sent, letters))


async def test_a_failing_task_is_retried_buried_and_replayed_once_the_fault_is_fixed(cluster: Cluster) -> None:
    postgres = Postgres(cluster.root)
    postgres.start()
    try:
        cluster.env["GOCHAT_STORE_URL"] = postgres.dsn
        cluster.start_task_worker()
        s = cluster.settings
        task = PersistMessageTask(
            task_id="persist:during-outage", timestamp=1,
            payload=PersistMessagePayload(message_id="during-outage", conversation_id="c1", from_user_id="a",
                                          to_user_id="b", content="stored at last", message_type="text",
                                          timestamp=1),
        )
        postgres.stop()  # the fault
        await produce(s, topics.task(s).name, [("persist_message", encode(task))])
        [letter] = [json.loads(r.value) for r in await consume_all(
            s, [topics.task_dlq(s).name], lambda rs: len(rs) >= 1)]
        assert (letter["service"], letter["reason"], letter["retry_count"]) == ("task", "handler_failed", 3)
        assert base64.b64decode(letter["value_b64"]) == encode(task)
        [alert] = [json.loads(r.value) for r in await consume_all(s, [topics.alert(s).name], lambda rs: len(rs) >= 1)]
        assert (alert["service"], alert["reason"], alert["offset"]) == ("task", "handler_failed", letter["offset"])
        log = (cluster.stack.log_dir / "tasks.log").read_text(errors="replace")
        assert log.count("persisting 1 messages failed") == 3

        postgres.start()  # the fix
        [listed] = [json.loads(line) for line in _dead_letters_cli(cluster, "--service", "task").splitlines()]
        assert listed["reason"] == "handler_failed" and listed["source_topic"] == topics.task(s).name
        _dead_letters_cli(cluster, "--service", "task", "--replay", listed["position"])

        store = await open_store(postgres.dsn)
        try:
            async with asyncio.timeout(WAIT_S):
                while not await store.count("during-outage"):
                    await asyncio.sleep(0.2)
            assert [m.content for m in await store.recent("c1", 10)] == ["stored at last"]
        finally:
            await store.close()
    finally:
        with contextlib.suppress(RuntimeError):  # already stopped if the test failed during the fault
            postgres.stop()
        postgres.remove()


async def test_a_gateway_buries_what_it_cannot_push_and_pushes_the_rest(cluster: Cluster, connect: Any) -> None:
    gw = cluster.start_gateway("gw1")
    bob, carol = await connect(gw, "bob"), await connect(gw, "carol")
    s = cluster.settings
    downstream = topics.downstream(s, "gw1").name
    good = {k: v for k, v in json.loads(_good(1)[1]).items() if k != "gateway_id"} | {"to_user_id": "bob"}
    value = json.dumps(good).encode()
    bad = [("bob", b"{not json", {}, "malformed_json"),
           ("bob", json.dumps(good | {"timestamp": "yesterday"}).encode(), {}, "invalid_schema"),
           ("", b"", {}, "missing_field"),
           ("bob", value, {topics.DOWNSTREAM_RECIPIENTS: b'{"bob":'}, "malformed_json"),
           ("bob", value, {topics.DOWNSTREAM_RECIPIENTS: b'{"bob":0}'}, "invalid_schema"),
           ("bob", value, {topics.DOWNSTREAM_RECIPIENTS: b'{"a:b":1}'}, "invalid_schema")]
    await produce(s, downstream, [(key, value, headers) for key, value, headers, _ in bad]
                  + [("bob", value, {topics.DOWNSTREAM_RECIPIENTS: b'{"bob":1,"carol":4}'})])

    # The good record after the bad ones is pushed to each user it names: their acks carry their seqs.
    for client in (bob, carol):
        assert [m["message_id"] for m in await client.messages(1, ack=True)] == ["good-0001"]
    def acked(records: list[Any]) -> list[tuple[str, str, int]]:
        return sorted((e["user_id"], e["message_id"], e["seq"]) for r in records
                      for e in json.loads(r.value).get("entries", ()))

    acks = await consume_all(s, [topics.user(s).name], lambda got: len(acked(got)) >= 2)
    assert acked(acks) == [("bob", "good-0001", 1), ("carol", "good-0001", 4)]
    letters = await consume_all(s, [topics.upstream_dlq(s).name], lambda got: len(got) >= len(bad))
    buried = [decode_dead_letter(r.value) for r in letters]
    assert sorted((d.service, d.source_topic, d.reason, d.retry_count, base64.b64decode(d.value_b64))
                  for d in buried) == sorted(("gateway", downstream, reason, 0, value) for _, value, _, reason in bad)


#: Larger than any request of ours (1 MiB by default), so too big to dead-letter whole.
BIG_SIZES = [2 * 1024 * 1024, 20 * 1024 * 1024, 2 * 1024 * 1024, 20 * 1024 * 1024]


def _take_records_of(s: Settings, topic: str, size: int) -> None:
    """Let ``topic`` take records of ``size`` bytes, as a topic whose foreign producers write such may be.

    Kafka refuses records over ``max.message.bytes`` (about 1 MiB by default).
    """
    entry = ConfigEntry("max.message.bytes", str(size + 1024 * 1024), incremental_operation=AlterConfigOpType.SET)
    admin = AdminClient({"bootstrap.servers": ",".join(s.bootstrap_servers)})
    for done in admin.incremental_alter_configs([ConfigResource(ResourceType.TOPIC, topic,
                                                                incremental_configs=[entry])]).values():
        done.result(WAIT_S)


def _big(i: int, size: int) -> bytes:
    """A record of ``size`` bytes that does not compress: alternately a chat message with huge content, and noise."""
    if i % 2:
        return os.urandom(size)
    head, tail = json.loads(_good(i)[1]), b'"}'
    head["content"] = ""
    prefix = json.dumps(head).encode()[:-2]
    filler = base64.b64encode(os.urandom(size))[: size - len(prefix) - len(tail)]
    return prefix + filler + tail


async def test_records_too_big_to_dead_letter_whole_are_buried_truncated_and_stall_nothing(
        cluster: Cluster, connect: Any) -> None:
    cluster.start_worker()
    gw = cluster.start_gateway("gw1")
    recipient = await connect(gw, RECIPIENTS[0])
    s = cluster.settings
    goods = [_good(i * len(RECIPIENTS)) for i in range(len(BIG_SIZES) + 1)]  # all to RECIPIENTS[0]
    bigs = [_big(i, size) for i, size in enumerate(BIG_SIZES)]
    _take_records_of(s, topics.upstream(s).name, max(BIG_SIZES))
    records: list[tuple[str, bytes]] = [goods[0]]
    for big, good in zip(bigs, goods[1:]):
        records += [("sender", big), good]  # one key: one partition, each big one before a good one
    sent = await produce(s, topics.upstream(s).name, records, max_request_size=64 * 1024 * 1024)

    # Every good record arrives, in order.
    assert [m["message_id"] for m in await recipient.messages(len(goods), ack=True)] == [
        json.loads(value)["message_id"] for _, value in goods]

    # Each big one is listed, as an oversize letter with its size and position, truncated.
    big_positions = {(sent[i].partition, sent[i].offset): big for i, big in zip(range(1, len(records), 2), bigs)}
    await consume_all(s, [topics.upstream_dlq(s).name], lambda rs: len(rs) >= len(bigs))  # all written
    listed = [json.loads(line) for line in _dead_letters_cli(cluster).splitlines()]
    assert sorted((d["source_topic"], d["partition"], d["offset"], d["reason"], d["value_size"], d["truncated"])
                  for d in listed) == sorted((topics.upstream(s).name, partition, offset, "oversize", len(big), True)
                                             for (partition, offset), big in big_positions.items())
    # The copy is the record's beginning, and each letter fits the producer's requests.
    for record in await consume_all(s, [topics.upstream_dlq(s).name], lambda rs: len(rs) >= len(bigs)):
        letter = decode_dead_letter(record.value)
        assert len(record.value) <= s.producer_max_request_bytes
        assert big_positions[letter.partition, letter.offset].startswith(base64.b64decode(letter.value_b64))

    # A truncated letter is not the record: it is not replayed.
    refused = subprocess.run(
        [sys.executable, "-m", "gochat_streams", "dead-letters", "--replay", listed[0]["position"]],
        env={**os.environ, **cluster.env}, capture_output=True, text=True, timeout=WAIT_S)
    assert refused.returncode != 0 and "truncated" in refused.stderr, refused.stderr

    # The agent never crashed nor restarted.
    log = (cluster.stack.log_dir / "w1.log").read_text(errors="replace")
    assert log.count("[^Worker]: Ready") == 1
    assert "crash" not in log.lower() and "Restarting dead" not in log and "MessageSizeTooLargeError" not in log


async def test_a_gateway_buries_a_record_too_big_to_copy_whole_truncated(cluster: Cluster, connect: Any) -> None:
    gw = cluster.start_gateway("gw1")
    bob = await connect(gw, "bob")
    s = cluster.settings
    downstream = topics.downstream(s, "gw1").name
    good = {k: v for k, v in json.loads(_good(1)[1]).items() if k != "gateway_id"} | {"to_user_id": "bob"}
    big = os.urandom(BIG_SIZES[0])
    _take_records_of(s, downstream, len(big))
    [sent, _] = await produce(s, downstream, [("bob", big), ("bob", json.dumps(good).encode())],
                              max_request_size=64 * 1024 * 1024)

    assert [m["message_id"] for m in await bob.messages(1)] == ["good-0001"]
    [record] = await consume_all(s, [topics.upstream_dlq(s).name], lambda got: len(got) >= 1)
    letter = decode_dead_letter(record.value)
    assert (letter.service, letter.reason, letter.partition, letter.offset) == (
        "gateway", "oversize", sent.partition, sent.offset)
    assert (letter.value_size, letter.truncated) == (len(big), True)
    assert big.startswith(base64.b64decode(letter.value_b64))
