"""Group chat end to end: membership from system_group messages, small and large fan-out, refusals."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import pytest

from gochat_streams import topics
from gochat_streams.routing import partition_of

from .conftest import WAIT_S, Client, Cluster, consume_all, history

pytestmark = pytest.mark.integration


async def _until(check: Any, what: str, timeout: float = WAIT_S) -> Any:
    """Poll ``check()`` until it returns something truthy."""
    async with asyncio.timeout(timeout):
        while not (result := check()):
            await asyncio.sleep(0.2)
    assert result, what
    return result


async def test_small_group_reaches_members_once_sender_devices_and_the_offline_member(
    cluster: Cluster, connect: Any
) -> None:
    cluster.start_worker()
    cluster.start_task_worker()
    gw1, gw2 = cluster.start_gateway("gw1"), cluster.start_gateway("gw2")
    john, john_phone = await connect(gw1, "john"), await connect(gw2, "john")
    alice, bob = await connect(gw1, "alice"), await connect(gw2, "bob")

    await john.group_action("create-g4", "g4", "create", member_ids=["alice", "bob", "dave"])
    assert await john.next_frame() == {"type": "ack", "message_id": "create-g4"}
    for member in (alice, bob, john_phone):
        [created] = await member.messages(1, ack=True)
        assert (created["message_id"], created["content"]) == ("create-g4", "john 创建了群组")

    await john.send_to_group("hello-g4", "g4", "hello, group")
    assert await john.next_frame() == {"type": "ack", "message_id": "hello-g4"}
    for member in (alice, bob, john_phone):
        [hello] = await member.messages(1, ack=True)
        assert (hello["message_id"], hello["from_user_id"], hello["conversation_id"], hello["to_user_id"]) == (
            "hello-g4", "john", "g4", None)

    pushes = await _until(lambda: [p for p in cluster.pushes() if p["message_id"] == "hello-g4"], "dave's push")
    assert [(p["user_id"], p["title"], p["content"]) for p in pushes] == [("dave", "新消息", "john: hello, group")]

    dave = await connect(gw2, "dave")
    assert [m["message_id"] for m in await dave.messages(2, ack=True)] == ["create-g4", "hello-g4"]
    # Once each, everywhere: every member's next frame is the next message, the
    # sending socket gets its acks and no copy of its own message.
    await john.send_to_group("again-g4", "g4")
    assert await john.next_frame() == {"type": "ack", "message_id": "again-g4"}
    for member in (alice, bob, john_phone, dave):
        assert [m["message_id"] for m in await member.messages(1)] == ["again-g4"]
    await john.nothing_more()

    # History: members read it, from the task service's store; others may not.
    async with asyncio.timeout(WAIT_S):
        while True:
            status, body = await history(gw1, "alice", "g4")
            if status == 200 and len(body["messages"]) == 3:
                break
            await asyncio.sleep(0.2)
    assert [(m["message_id"], m["content"]) for m in body["messages"]] == [
        ("create-g4", "john 创建了群组"), ("hello-g4", "hello, group"), ("again-g4", "hello")]
    assert (await history(gw2, "eve", "g4"))[0] == 403


async def test_large_group_fans_out_through_batched_tasks(cluster: Cluster, connect: Any) -> None:
    cluster.start_worker()
    cluster.start_task_worker()
    gateways = [cluster.start_gateway("gw1"), cluster.start_gateway("gw2")]
    users = [f"u{i:04d}" for i in range(1000)]
    clients: list[Client] = []
    for start in range(0, len(users), 100):
        clients += await asyncio.gather(
            *(connect(gateways[i % 2], user) for i, user in enumerate(users[start:start + 100], start)))
    owner = clients[0]

    await owner.group_action("create-big", "big", "create", member_ids=users[1:])
    assert await owner.next_frame() == {"type": "ack", "message_id": "create-big"}
    created = await asyncio.gather(*(c.messages(1, ack=True) for c in clients[1:]))
    assert {m["message_id"] for [m] in created} == {"create-big"}

    await owner.send_to_group("hello-big", "big", "hello, everyone")
    assert await owner.next_frame() == {"type": "ack", "message_id": "hello-big"}
    received = await asyncio.gather(*(c.messages(1, ack=True) for c in clients[1:]))
    assert all(m["message_id"] == "hello-big" for [m] in received)

    s = cluster.settings
    fanouts = [json.loads(r.value) for r in await consume_all(
        s, [topics.task(s).name], lambda records: sum(b'"group_fanout"' in r.value for r in records) >= 10)
        if json.loads(r.value)["task_type"] == "group_fanout"]
    assert [len(t["payload"]["member_ids"]) for t in fanouts] == [100] * 9 + [99]
    assert all(t["payload"]["batch_size"] == 100 and t["payload"]["exclude_user_ids"] == ["u0000"] for t in fanouts)
    # A record per partition a task's members are on, not one per member; each names
    # only users of its partition, so a user's records keep their order.
    deliveries = await consume_all(s, [topics.user(s).name], lambda rs: _named(rs, b'"hello-big"') >= 999)
    deliveries = [r for r in deliveries if b'"hello-big"' in r.value
                  and json.loads(r.value)["kind"] == "delivery" and not json.loads(r.value)["echo"]]
    assert len(deliveries) <= len(fanouts) * s.user_partitions
    assert Counter(u for r in deliveries for u in json.loads(r.value)["user_ids"]) == Counter(users[1:])
    assert all(_on_partition(r, json.loads(r.value)["user_ids"], s.user_partitions) for r in deliveries)
    # Once each: the downstream topics carry hello-big exactly once per member, a
    # record per gateway and partition that a delivery's online members are on.
    downstream = [topics.downstream_name(s, gw) for gw in ("gw1", "gw2")]
    records = await consume_all(s, downstream, lambda rs: _named(rs, b'"hello-big"') >= 999)
    pushed = [r for r in records if b'"hello-big"' in r.value and _recipients(r)]
    assert len(pushed) <= len(deliveries) * len(gateways) * s.downstream_partitions
    assert Counter(u for r in pushed for u in _recipients(r)) == Counter(users[1:])
    assert all(_on_partition(r, list(_recipients(r)), s.downstream_partitions) for r in pushed)
    # The members' acks, sent at once, share records: each of a partition's users.
    acks = await consume_all(s, [topics.user(s).name], lambda rs: len(_acked(rs, "hello-big")) >= 999)
    acks = [r for r in acks if b'"hello-big"' in r.value and json.loads(r.value)["kind"] == "ack"]
    assert sorted(_acked(acks, "hello-big")) == users[1:]
    assert len(acks) < 999 / 2
    assert all(_on_partition(r, [e["user_id"] for e in json.loads(r.value)["entries"]], s.user_partitions)
               for r in acks)


def _acked(records: list[Any], message_id: str) -> list[str]:
    return [e["user_id"] for r in records for e in json.loads(r.value).get("entries", ())
            if e["message_id"] == message_id]


def _recipients(record: Any) -> dict[str, int]:
    return json.loads(dict(record.headers).get(topics.DOWNSTREAM_RECIPIENTS, b"{}"))


def _named(records: list[Any], message_id: bytes) -> int:
    """How many users the records of ``message_id`` name (as user_ids, or as downstream recipients)."""
    return sum(len(json.loads(r.value).get("user_ids", ())) or len(_recipients(r))
               for r in records if message_id in r.value)


def _on_partition(record: Any, users: list[str], partitions: int) -> bool:
    return record.key.decode() == users[0] and {partition_of(u, partitions) for u in users} == {record.partition}


async def test_non_members_message_and_non_owners_kick_are_refused(cluster: Cluster, connect: Any) -> None:
    cluster.start_worker()
    gw = cluster.start_gateway("gw1")
    john, alice, eve = await connect(gw, "john"), await connect(gw, "alice"), await connect(gw, "eve")
    await john.group_action("create-g3", "g3", "create", member_ids=["alice"])
    await john.next_frame()
    await alice.messages(1, ack=True)

    await eve.send_to_group("gatecrash", "g3", "let me in")
    assert await eve.next_frame() == {"type": "ack", "message_id": "gatecrash"}
    refused = await eve.next_frame()
    assert (refused["type"], refused["code"], refused["message_id"]) == ("error", "not_a_member", "gatecrash")

    await alice.group_action("coup", "g3", "kick", invitee_id="john")
    assert await alice.next_frame() == {"type": "ack", "message_id": "coup"}
    refused = await alice.next_frame()
    assert (refused["type"], refused["code"], refused["message_id"]) == ("error", "forbidden", "coup")

    # Nothing was delivered and nothing changed: john is still in, and his next
    # message is the first thing alice gets.
    await john.send_to_group("still-here", "g3")
    assert await john.next_frame() == {"type": "ack", "message_id": "still-here"}
    assert [m["message_id"] for m in await alice.messages(1)] == ["still-here"]
    await eve.nothing_more()
