"""Gateway sockets: one that stops reading holds up no one else (gateway/hub.py: send queues), the
per-user socket limit, and a reconnect sync larger than the send queue."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gochat_streams import topics

from .conftest import WAIT_S, Client, Cluster, consume_all, token

pytestmark = pytest.mark.integration

#: The issue's flood: messages of 8 KB to a socket that never reads.
FLOOD = 800
FLOOD_PER_S = 80
CONTENT = "x" * 8000


async def never_reading_socket(base_url: str, user_id: str) -> socket.socket:
    """A WebSocket client that does the handshake, then never reads again; small receive buffer."""
    url = urlsplit(base_url)
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, (url.hostname, url.port))
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(sock, (
        f"GET /ws HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {token(user_id)}\r\n\r\n"
    ).encode())
    response = b""
    while not response.endswith(b"\r\n\r\n"):  # byte by byte: nothing after the headers is read
        response += await loop.sock_recv(sock, 1)
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


async def closed_by_peer(sock: socket.socket, timeout: float = WAIT_S) -> bool:
    """Read what the socket was sent until the peer's end of stream; whether it came."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            while await loop.sock_recv(sock, 1 << 16):
                pass
    except ConnectionResetError:
        pass
    return True


async def sockets_closed(base_url: str) -> dict[str, float]:
    """gochat_sockets_closed_total by reason."""
    async with aiohttp.ClientSession() as http, http.get(f"{base_url}/metrics") as response:
        text = await response.text()
    return {s.labels["reason"]: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "gochat_sockets_closed_total"}


async def slow_sockets_closed(base_url: str) -> float:
    """Sockets the gateway closed because their client stopped reading, once it has counted them."""
    await asyncio.sleep(0.5)  # the count follows the close by the socket handler's last steps
    closed = await sockets_closed(base_url)
    return closed.get("queue_full", 0) + closed.get("send_timeout", 0)


async def _flood(mallory: Client, to: str, ids: list[str]) -> None:
    """``ids`` to ``to`` at FLOOD_PER_S, each acked by the gateway."""
    async def acks() -> None:
        for message_id in ids:
            assert await mallory.next_frame() == {"type": "ack", "message_id": message_id}

    reading = asyncio.create_task(acks())
    for message_id in ids:
        await mallory.send(message_id, to, content=CONTENT)
        await asyncio.sleep(1 / FLOOD_PER_S)
    await reading


async def test_a_socket_that_never_reads_holds_up_no_one_and_gets_its_messages_on_reconnect(
    cluster: Cluster, connect: Any
) -> None:
    cluster.env.update({
        "GOCHAT_WS_SEND_QUEUE_MAX": "100",
        "GOCHAT_WS_SEND_TIMEOUT_S": "2",
        "GOCHAT_MAX_FRAMES_PER_S": "500",
        "GOCHAT_MAX_FRAMES_BURST": "1000",
    })
    cluster.start_worker()
    gw = cluster.start_gateway("gw1")
    alice, bob, mallory = await connect(gw, "alice"), await connect(gw, "bob"), await connect(gw, "mallory")
    slow = await never_reading_socket(gw, "slow")
    try:
        # Every path is warm before the clock matters.
        await alice.send("warm", "bob")
        assert await alice.next_frame() == {"type": "ack", "message_id": "warm"}
        assert [m["message_id"] for m in await bob.messages(1)] == ["warm"]

        flood_ids = [f"f{i}" for i in range(FLOOD)]
        flood = asyncio.create_task(_flood(mallory, "slow", flood_ids))
        sent = 0
        while not flood.done():
            # Each of alice's messages reaches bob within 2 s, in order, all through the flood.
            await alice.send(f"a{sent}", "bob")
            try:
                assert await alice.next_frame(timeout=2.0) == {"type": "ack", "message_id": f"a{sent}"}
                assert [m["message_id"] for m in await bob.messages(1, timeout=2.0)] == [f"a{sent}"]
            except TimeoutError:
                pytest.fail(f"a{sent} did not reach bob within 2 s of being sent, during the flood")
            sent += 1
            await asyncio.sleep(0.1)
        await flood

        assert await closed_by_peer(slow)
        assert await slow_sockets_closed(gw) == 1
        async with aiohttp.ClientSession() as http, http.get(f"{gw}/healthz") as response:
            assert (await response.json())["connections"] == 3
    finally:
        slow.close()

    # The slow user comes back reading: everything it was sent, once each, in order.
    again = await connect(gw, "slow")
    assert [m["message_id"] for m in await again.messages(FLOOD, ack=True)] == flood_ids
    await again.nothing_more()


async def test_beyond_the_per_user_socket_limit_the_oldest_socket_is_closed(cluster: Cluster, connect: Any) -> None:
    cluster.env["GOCHAT_MAX_SOCKETS_PER_USER"] = "2"
    cluster.start_worker()
    gw = cluster.start_gateway("gw1")
    alice = await connect(gw, "alice")
    oldest, *newest = [await connect(gw, "bob") for _ in range(3)]

    closing = await oldest.ws.receive(timeout=10)
    assert (closing.type, closing.data, closing.extra) == (aiohttp.WSMsgType.CLOSE, 1001, "socket_limit")
    await alice.send("m1", "bob")
    assert await alice.next_frame() == {"type": "ack", "message_id": "m1"}
    for bob in newest:
        assert [m["message_id"] for m in await bob.messages(1)] == ["m1"]
    assert (await sockets_closed(gw)).get("socket_limit") == 1


PENDING = 3000


async def test_a_reconnect_sync_larger_than_the_send_queue_does_not_close_the_socket(
    cluster: Cluster, connect: Any
) -> None:
    """The sync is bounded by the inbox, not by the live send queue: a new socket that reads
    slower than its backlog arrives is not taken for a client that stopped reading."""
    cluster.env.update({
        "GOCHAT_WS_SEND_QUEUE_MAX": "50",
        "GOCHAT_WS_SEND_TIMEOUT_S": "5",
        "GOCHAT_MAX_FRAMES_PER_S": "5000",
        "GOCHAT_MAX_FRAMES_BURST": "5000",
    })
    cluster.start_worker()
    gw = cluster.start_gateway("gw1")
    senders = [await connect(gw, f"s{i}") for i in range(10)]
    ids = {s.user_id: [f"{s.user_id}-{i:04d}" for i in range(PENDING // len(senders))] for s in senders}

    async def send_all(sender: Client) -> None:
        for message_id in ids[sender.user_id]:
            await sender.send(message_id, "carol", content="y" * 4000)
        acks = await sender.frames(len(ids[sender.user_id]))
        assert [a["message_id"] for a in acks] == ids[sender.user_id]

    await asyncio.gather(*(send_all(s) for s in senders))
    # All of them in carol's inbox (each offline one is pushed) before she connects.
    await consume_all(cluster.settings, [topics.task(cluster.settings).name],
                      lambda records: sum(r.key == b"offline_push" for r in records) >= PENDING)

    carol = await connect(gw, "carol")
    await asyncio.sleep(1)  # her backlog piles up in the gateway meanwhile
    received = [m["message_id"] for m in await carol.messages(PENDING, ack=True)]
    for sender in senders:
        assert [i for i in received if i.startswith(f"{sender.user_id}-")] == ids[sender.user_id]
    assert len(received) == PENDING
    assert await sockets_closed(gw) == {}
