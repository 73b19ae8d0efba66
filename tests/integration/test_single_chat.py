"""Single chat through the real broker, Faust workers and gateways, with WebSocket clients."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from gochat_streams import topics

from .conftest import Cluster, token

pytestmark = pytest.mark.integration

RECIPIENTS = [f"bob{i}" for i in range(10)]


@pytest.mark.parametrize("workers", [1, 2], ids=["one-worker", "two-workers"])
async def test_message_reaches_each_recipient_once_in_downstream_format(
    cluster: Cluster, connect: Any, workers: int
) -> None:
    # Ten recipients spread over the user-topic partitions, so with two workers both
    # workers route messages with their own share of the presence table.
    for i in range(workers):
        cluster.start_worker(f"w{i + 1}")
    gw1, gw2 = cluster.start_gateway("gw1"), cluster.start_gateway("gw2")
    alice = await connect(gw1, "alice")
    bobs = [await connect(gw1 if i % 2 else gw2, user) for i, user in enumerate(RECIPIENTS)]

    for bob in bobs:
        await alice.send(f"m-{bob.user_id}", bob.user_id, content=f"hi {bob.user_id}")
    acks = await alice.frames(len(bobs))
    assert acks == [{"type": "ack", "message_id": f"m-{bob.user_id}"} for bob in bobs]

    for bob in bobs:
        frame = await bob.next_frame()
        assert frame["type"] == "message"
        message = frame["message"]
        assert message["message_id"] == f"m-{bob.user_id}"
        assert message["from_user_id"] == "alice"
        assert message["to_user_id"] == bob.user_id
        # The client named its own conversation id (conftest: c_<message_id>); the server
        # names a single chat by its two users.
        assert message["conversation_id"] == f"alice:{bob.user_id}"
        assert message["content"] == f"hi {bob.user_id}"
        assert message["version"] == "1.0"
        assert set(message) == {"message_id", "from_user_id", "to_user_id", "conversation_id", "content",
                                "message_type", "metadata", "timestamp", "version"}

    if workers == 2:
        # Both workers routed with their own share of the presence table.
        user_topic = topics.user(cluster.settings)
        shares = [cluster.assigned(w, user_topic.name) for w in ("w1", "w2")]
        assert all(shares) and not shares[0] & shares[1]
        assert shares[0] | shares[1] == set(range(user_topic.partitions))

    # Once: the next thing each recipient receives is the second message, not a copy.
    for bob in bobs:
        await alice.send(f"second-{bob.user_id}", bob.user_id)
    await alice.frames(len(bobs))
    for bob in bobs:
        assert (await bob.next_frame())["message"]["message_id"] == f"second-{bob.user_id}"


async def test_claiming_another_sender_is_refused_and_nothing_is_delivered(cluster: Cluster, connect: Any) -> None:
    cluster.start_worker()
    gw = cluster.start_gateway("gw1")
    alice, bob = await connect(gw, "alice"), await connect(gw, "bob")

    await alice.send("spoofed", "bob", from_user_id="carol")
    assert await alice.next_frame() == {
        "type": "error", "code": "sender_mismatch", "detail": "from_user_id is not the authenticated user",
        "message_id": "spoofed",
    }
    await alice.send("honest", "bob", from_user_id="alice")
    assert await alice.next_frame() == {"type": "ack", "message_id": "honest"}
    # Bob's first frame is the honest message: the spoofed one never reached the broker.
    assert (await bob.next_frame())["message"]["message_id"] == "honest"


async def test_bad_frames_get_error_frames_and_the_socket_stays_open(cluster: Cluster, connect: Any) -> None:
    cluster.start_worker()
    gw = cluster.start_gateway("gw1")
    alice, bob = await connect(gw, "alice"), await connect(gw, "bob")

    await alice.ws.send_str("{not json")
    assert (await alice.next_frame())["code"] == "malformed_json"
    await alice.ws.send_json({"type": "teleport"})
    assert (await alice.next_frame())["code"] == "unknown_type"
    await alice.send("big", "bob", content="x" * 10_001)
    assert (await alice.next_frame())["code"] == "content_too_large"
    await alice.ws.send_str("x" * (64 * 1024 + 1))
    assert (await alice.next_frame())["code"] == "frame_too_large"

    await alice.send("fine", "bob")
    assert await alice.next_frame() == {"type": "ack", "message_id": "fine"}
    assert (await bob.next_frame())["message"]["message_id"] == "fine"


@pytest.mark.parametrize(
    "auth",
    [
        {},
        {"params": {"token": "not-a-token"}},
        {"headers": {"Authorization": "Bearer " + token("alice", ttl_s=-10)}},
        {"headers": {"Authorization": "Bearer " + token("alice")[:-2] + "xx"}},
    ],
    ids=["missing", "malformed", "expired", "forged"],
)
async def test_bad_token_gets_401_before_the_upgrade(cluster: Cluster, auth: dict[str, Any]) -> None:
    gw = cluster.start_gateway("gw1")
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(f"{gw}/ws", **auth)
    assert refused.value.status == 401


async def test_a_resent_message_is_delivered_once_also_from_another_gateway(cluster: Cluster, connect: Any) -> None:
    cluster.start_worker()
    gw1, gw2 = cluster.start_gateway("gw1"), cluster.start_gateway("gw2")
    alice, bob = await connect(gw1, "alice"), await connect(gw1, "bob")
    for _ in range(3):
        await alice.send("once", "bob")
    assert [f["message_id"] for f in await alice.frames(3)] == ["once"] * 3
    # Reconnected elsewhere, the client resends what it was unsure of: the logic
    # service has delivered it already.
    await alice.ws.close()
    alice = await connect(gw2, "alice")
    await alice.send("once", "bob")
    await alice.send("after", "bob")
    assert [f["message_id"] for f in await alice.frames(2)] == ["once", "after"]
    assert [m["message_id"] for m in await bob.messages(2)] == ["once", "after"]


async def test_a_frame_flood_is_limited_per_socket(cluster: Cluster, connect: Any) -> None:
    cluster.env.update({"GOCHAT_MAX_FRAMES_PER_S": "1", "GOCHAT_MAX_FRAMES_BURST": "5"})
    cluster.start_worker()
    gw = cluster.start_gateway("gw1")
    alice, bob = await connect(gw, "alice"), await connect(gw, "bob")
    for i in range(8):
        await alice.send(f"flood-{i}", "bob")
    frames = await alice.frames(8)
    assert [f["type"] for f in frames] == ["ack"] * 5 + ["error"] * 3
    assert [(f["code"], f["message_id"]) for f in frames[5:]] == [("rate_limited", f"flood-{i}") for i in (5, 6, 7)]
    # The socket stays open and the bucket refills.
    await asyncio.sleep(1.5)
    await alice.send("later", "bob")
    assert await alice.next_frame() == {"type": "ack", "message_id": "later"}
    assert [m["message_id"] for m in await bob.messages(6)] == [f"flood-{i}" for i in range(5)] + ["later"]


async def test_acks_of_a_reconnect_sync_are_not_rate_limited(cluster: Cluster, connect: Any) -> None:
    cluster.env.update({"GOCHAT_MAX_FRAMES_PER_S": "0.5", "GOCHAT_MAX_FRAMES_BURST": "3"})
    cluster.start_worker()
    gw = cluster.start_gateway("gw1")
    alice = await connect(gw, "alice")
    for i in range(3):
        await alice.send(f"while-away-{i}", "bob")
    assert [f["type"] for f in await alice.frames(3)] == ["ack"] * 3
    bob = await connect(gw, "bob")
    # More acks than the bucket holds, and bob's own sends after them still pass.
    assert [m["message_id"] for m in await bob.messages(3, ack=True)] == [f"while-away-{i}" for i in range(3)]
    await bob.ack("never-pushed")
    await bob.send("reply", "alice")
    await bob.send("reply-2", "alice")
    assert await bob.frames(2) == [{"type": "ack", "message_id": "reply"}, {"type": "ack", "message_id": "reply-2"}]
    # The acks reached bob's inbox: a new socket gets nothing again, only what is new.
    await bob.ws.close()
    bob = await connect(gw, "bob")
    await asyncio.sleep(2)  # alice's bucket refills a token
    await alice.send("later", "bob")
    assert [m["message_id"] for m in await bob.messages(1)] == ["later"]
