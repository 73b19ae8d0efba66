"""Who reads and writes a conversation's history, end to end (issue 13, point 1).

A single chat's conversation is its two users', whatever a client names; a group's
history is read by its current members, from their joining on.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from .conftest import WAIT_S, Client, Cluster, history

pytestmark = pytest.mark.integration


async def _stored(base_url: str, user_id: str, conversation_id: str, last_id: str) -> list[str]:
    """The message ids of ``user_id``'s history once ``last_id`` is in it."""
    async with asyncio.timeout(WAIT_S):
        while True:
            status, body = await history(base_url, user_id, conversation_id)
            ids = [m["message_id"] for m in body["messages"]] if status == 200 else []
            if last_id in ids:
                return ids
            await asyncio.sleep(0.2)


async def _acked_then(client: Client, message_id: str) -> dict[str, Any]:
    """The gateway's ack of ``message_id``, then the next frame."""
    assert await client.next_frame() == {"type": "ack", "message_id": message_id}
    return await client.next_frame()


async def test_naming_another_pairs_chat_reads_and_writes_nothing_of_it(cluster: Cluster, connect: Any) -> None:
    cluster.start_worker()
    cluster.start_task_worker()
    gw = cluster.start_gateway("gw1")
    alice, bob, mallory = await connect(gw, "alice"), await connect(gw, "bob"), await connect(gw, "mallory")

    # The id the demo page used to build for alice and bob.
    await mallory.send("evil", "bob", "hi bob", conversation_id="alice:bob")
    assert await mallory.next_frame() == {"type": "ack", "message_id": "evil"}
    [evil] = await bob.messages(1, ack=True)
    assert (evil["message_id"], evil["conversation_id"]) == ("evil", "bob:mallory")
    # A client may leave a single chat's conversation_id out. bob answers once he has
    # alice's message, so the store has them in that order (two senders' messages are
    # otherwise in no order of each other).
    await alice.send("ab-1", "bob", "hi", conversation_id=None)
    assert await alice.next_frame() == {"type": "ack", "message_id": "ab-1"}
    assert [(m["message_id"], m["conversation_id"]) for m in await bob.messages(1)] == [("ab-1", "alice:bob")]
    await bob.send("ab-2", "alice", "hello", conversation_id="whatever")
    assert await bob.next_frame() == {"type": "ack", "message_id": "ab-2"}
    assert [(m["message_id"], m["conversation_id"]) for m in await alice.messages(1)] == [("ab-2", "alice:bob")]

    assert await _stored(gw, "alice", "alice:bob", "ab-2") == ["ab-1", "ab-2"]
    assert await _stored(gw, "bob", "alice:bob", "ab-2") == ["ab-1", "ab-2"]
    assert (await history(gw, "mallory", "alice:bob"))[0] == 403
    assert (await history(gw, "mallory", "bob:alice"))[0] == 403
    assert await _stored(gw, "bob", "bob:mallory", "evil") == ["evil"]
    assert await _stored(gw, "mallory", "bob:mallory", "evil") == ["evil"]
    assert (await history(gw, "alice", "bob:mallory"))[0] == 403

    # Nor can a group take the pair's id.
    await mallory.group_action("fake", "alice:bob", "create", member_ids=["alice", "bob"])
    refused = await _acked_then(mallory, "fake")
    assert (refused["type"], refused["code"], refused["message_id"]) == ("error", "invalid_request", "fake")
    await mallory.send_to_group("fake-hello", "alice:bob", "I am in your chat")
    refused = await _acked_then(mallory, "fake-hello")
    assert (refused["type"], refused["code"]) == ("error", "invalid_request")
    await alice.send("ab-3", "bob")
    assert await alice.next_frame() == {"type": "ack", "message_id": "ab-3"}
    assert [m["message_id"] for m in await bob.messages(1)] == ["ab-3"]  # nothing of mallory's came first
    assert await _stored(gw, "bob", "alice:bob", "ab-3") == ["ab-1", "ab-2", "ab-3"]


async def test_a_direct_message_naming_a_group_makes_no_reader_or_writer_of_it(
    cluster: Cluster, connect: Any
) -> None:
    cluster.start_worker()
    cluster.start_task_worker()
    gw = cluster.start_gateway("gw1")
    john, alice, mallory = await connect(gw, "john"), await connect(gw, "alice"), await connect(gw, "mallory")
    await john.group_action("create-g5", "g5", "create", member_ids=["alice"])
    assert await john.next_frame() == {"type": "ack", "message_id": "create-g5"}
    await alice.messages(1, ack=True)

    await mallory.send("dm-g5", "alice", "let me in", conversation_id="g5")
    assert await mallory.next_frame() == {"type": "ack", "message_id": "dm-g5"}
    [dm] = await alice.messages(1, ack=True)
    assert (dm["message_id"], dm["conversation_id"]) == ("dm-g5", "alice:mallory")
    await mallory.send_to_group("into-g5", "g5", "still me")
    refused = await _acked_then(mallory, "into-g5")
    assert (refused["code"], refused["message_id"]) == ("not_a_member", "into-g5")

    await john.send_to_group("hello-g5", "g5")
    assert await john.next_frame() == {"type": "ack", "message_id": "hello-g5"}
    assert [m["message_id"] for m in await alice.messages(1)] == ["hello-g5"]
    assert await _stored(gw, "alice", "g5", "hello-g5") == ["create-g5", "hello-g5"]
    assert await _stored(gw, "alice", "alice:mallory", "dm-g5") == ["dm-g5"]
    assert (await history(gw, "mallory", "g5"))[0] == 403


async def test_members_read_from_their_joining_and_a_kicked_member_reads_nothing(
    cluster: Cluster, connect: Any
) -> None:
    cluster.start_worker()
    cluster.start_task_worker()
    gw = cluster.start_gateway("gw1")
    john, alice, bob = await connect(gw, "john"), await connect(gw, "alice"), await connect(gw, "bob")

    async def group_step(sender: Client, message_id: str, *, to: list[Client], action: str | None = None,
                         **metadata: Any) -> None:
        if action is None:
            await sender.send_to_group(message_id, "g6")
        else:
            await sender.group_action(message_id, "g6", action, **metadata)
        assert await sender.next_frame() == {"type": "ack", "message_id": message_id}
        for member in to:
            assert [m["message_id"] for m in await member.messages(1, ack=True)] == [message_id]

    await group_step(john, "create", to=[alice], action="create", member_ids=["alice"])
    await group_step(john, "before", to=[alice])
    await group_step(bob, "bob-joins", to=[john, alice], action="join")
    await group_step(alice, "after", to=[john, bob])

    assert await _stored(gw, "alice", "g6", "after") == ["create", "before", "bob-joins", "after"]
    assert await _stored(gw, "bob", "g6", "after") == ["bob-joins", "after"]

    await group_step(john, "kick-alice", to=[alice, bob], action="kick", invitee_id="alice")
    await _stored(gw, "john", "g6", "kick-alice")
    assert (await history(gw, "alice", "g6"))[0] == 403
    await group_step(john, "while-out", to=[bob])

    # Rejoining starts again from the rejoining.
    await group_step(alice, "alice-rejoins", to=[john, bob], action="join")
    assert await _stored(gw, "alice", "g6", "alice-rejoins") == ["alice-rejoins"]
    assert await _stored(gw, "bob", "g6", "alice-rejoins") == [
        "bob-joins", "after", "kick-alice", "while-out", "alice-rejoins"]
