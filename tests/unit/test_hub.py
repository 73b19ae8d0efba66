"""What a gateway socket is owed while a push is in flight (gateway/hub.py).

A socket whose client reads slowly makes ``send_str`` wait for its buffer to drain, and
meanwhile the client may already have the frame and ack it. Real aiohttp cannot be
held at that point on demand, so the socket here is one whose send waits for the test.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from aiohttp import web

from gochat_streams.gateway.hub import Connection, TokenBucket


class DrainingSocket:
    """Sends wait until ``drained`` is set, then succeed, or fail if ``gone``."""

    def __init__(self) -> None:
        self.closed, self.gone = False, False
        self.drained = asyncio.Event()
        self.frames: list[str] = []

    async def send_str(self, frame: str) -> None:
        await self.drained.wait()
        if self.gone:
            raise ConnectionResetError("client went away")
        self.frames.append(frame)


def _connection(ws: Any) -> Connection:
    return Connection("bob", "c1", cast(web.WebSocketResponse, ws), TokenBucket(1, 1))


async def test_a_message_is_owed_while_its_push_drains() -> None:
    ws = DrainingSocket()
    conn = _connection(ws)
    push = asyncio.create_task(conn.push("frame", "alice", "m1", 7))
    await asyncio.sleep(0)
    # The client's ack may come now: it must find the message owed.
    assert conn.unacked == {"m1": 7}
    ws.drained.set()
    assert await push is True
    assert ws.frames == ["frame"]
    # A copy (a crash replay) is not pushed again.
    assert await conn.push("frame", "alice", "m1", 7) is True
    assert ws.frames == ["frame"]


async def test_a_push_that_fails_owes_nothing_and_may_come_again() -> None:
    ws = DrainingSocket()
    ws.gone = True
    ws.drained.set()
    conn = _connection(ws)
    assert await conn.push("frame", "alice", "m1", 7) is False
    assert conn.unacked == {}
    ws.gone = False
    assert await conn.push("frame", "alice", "m1", 7) is True
    assert ws.frames == ["frame"] and conn.unacked == {"m1": 7}
