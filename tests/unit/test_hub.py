"""A gateway socket's send queue and writer, and what the socket is owed (gateway/hub.py).

A socket whose client reads slowly makes ``send_str`` wait for its buffer to drain. Real
aiohttp cannot be held at that point on demand, so the socket here is one whose sends
wait for the test.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from aiohttp import WSCloseCode, web

from gochat_streams.gateway.hub import Connection, Hub, SendLimits, TokenBucket


class DrainingSocket:
    """Sends wait until ``drained`` is set, then succeed, or fail if ``gone``; closes are recorded."""

    def __init__(self) -> None:
        self.closed, self.gone = False, False
        self.drained = asyncio.Event()
        self.drained.set()
        self.frames: list[str] = []
        self.close_code: int | None = None

    async def send_str(self, frame: str) -> None:
        await self.drained.wait()
        if self.gone:
            raise ConnectionResetError("client went away")
        self.frames.append(frame)

    async def close(self, *, code: int, message: bytes, drain: bool) -> bool:
        self.closed, self.close_code = True, code
        return True


class Transport:
    aborted = False

    def abort(self) -> None:
        self.aborted = True


def _connection(ws: Any, queue_max: int = 10, sync_max: int = 100, timeout_s: float = 5.0,
                connection_id: str = "c1", transport: Any = None) -> Connection:
    return Connection("bob", connection_id, cast(web.WebSocketResponse, ws), TokenBucket(1, 1),
                      SendLimits(queue_max, sync_max, timeout_s), transport)


async def _written(conn: Connection) -> None:
    """Let the writer run until it waits again."""
    for _ in range(10):
        await asyncio.sleep(0)


async def test_frames_are_written_in_order_by_the_sockets_own_writer() -> None:
    ws = DrainingSocket()
    conn = _connection(ws)
    writer = asyncio.create_task(conn.write())
    assert conn.push("m1", "alice", "m1", 1) and conn.push("m2", "alice", "m2", 2)
    assert conn.enqueue("error frame")
    await _written(conn)
    assert ws.frames == ["m1", "m2", "error frame"]
    writer.cancel()


async def test_a_message_is_owed_from_the_push_before_its_write_drains() -> None:
    ws = DrainingSocket()
    ws.drained.clear()
    conn = _connection(ws)
    writer = asyncio.create_task(conn.write())
    assert conn.push("frame", "alice", "m1", 7) is True
    await _written(conn)
    # The client's ack may come now: it must find the message owed.
    assert conn.unacked == {"m1": 7} and ws.frames == []
    ws.drained.set()
    await _written(conn)
    assert ws.frames == ["frame"]
    # A copy (a crash replay) is not pushed again.
    assert conn.push("frame", "alice", "m1", 7) is True
    await _written(conn)
    assert ws.frames == ["frame"]
    writer.cancel()


async def test_a_full_queue_closes_the_socket_going_away_and_cuts_it_off() -> None:
    ws, transport = DrainingSocket(), Transport()
    ws.drained.clear()  # the client stopped reading
    conn = _connection(ws, queue_max=3, timeout_s=60, transport=transport)
    writer = asyncio.create_task(conn.write())
    assert conn.push("m0", "alice", "m0", 0)
    await _written(conn)  # m0 is being written, and waits for the client
    assert [conn.push(f"m{i}", "alice", f"m{i}", i) for i in range(1, 4)] == [True] * 3
    assert conn.push("m4", "alice", "m4", 4) is False
    assert conn.closing == "queue_full"
    assert conn.push("m5", "alice", "m5", 5) is False and not conn.enqueue("error")
    ws.drained.set()  # the write in flight ends; nothing queued is written after it
    await asyncio.wait_for(writer, 1)
    assert ws.frames == ["m0"]
    assert ws.close_code == WSCloseCode.GOING_AWAY and transport.aborted


async def test_a_write_that_does_not_drain_in_time_closes_the_socket() -> None:
    ws, transport = DrainingSocket(), Transport()
    ws.drained.clear()
    conn = _connection(ws, timeout_s=0.05, transport=transport)
    writer = asyncio.create_task(conn.write())
    conn.push("m0", "alice", "m0", 0)
    conn.push("m1", "alice", "m1", 1)
    await asyncio.wait_for(writer, 1)
    assert conn.closing == "send_timeout" and ws.frames == []
    assert ws.close_code == WSCloseCode.GOING_AWAY and transport.aborted


async def test_a_reconnect_sync_beyond_the_live_bound_does_not_close_a_socket() -> None:
    ws = DrainingSocket()
    ws.drained.clear()  # a new socket being sent its backlog faster than it reads
    conn = _connection(ws, queue_max=3, sync_max=100, timeout_s=60)
    writer = asyncio.create_task(conn.write())
    assert all(conn.push(f"s{i}", "alice", f"s{i}", i, sync=True) for i in range(100))
    # Live messages meanwhile have their own bound.
    assert all(conn.push(f"l{i}", "carol", f"l{i}", 100 + i) for i in range(3))
    assert conn.closing is None
    ws.drained.set()
    await _written(conn)
    assert ws.frames == [*(f"s{i}" for i in range(100)), "l0", "l1", "l2"]
    # Beyond the sync bound (the inbox's cap) the socket is closed after all.
    ws.drained.clear()
    assert all(conn.push(f"t{i}", "alice", f"t{i}", 200 + i, sync=True) for i in range(100))
    assert conn.push("t100", "alice", "t100", 300, sync=True) is False and conn.closing == "queue_full"
    writer.cancel()


async def test_a_closing_with_a_last_frame_writes_what_is_queued_first() -> None:
    ws, transport = DrainingSocket(), Transport()
    conn = _connection(ws, transport=transport)
    conn.push("m1", "alice", "m1", 1)
    conn.close("token_expired", "expired frame")
    assert conn.push("m2", "alice", "m2", 2) is False
    await asyncio.wait_for(conn.write(), 1)
    assert ws.frames == ["m1", "expired frame"]
    assert ws.close_code == WSCloseCode.POLICY_VIOLATION and not transport.aborted


async def test_a_write_to_a_socket_that_went_away_ends_the_writer() -> None:
    ws = DrainingSocket()
    ws.gone = True
    conn = _connection(ws)
    conn.push("m1", "alice", "m1", 1)
    await asyncio.wait_for(conn.write(), 1)
    assert ws.frames == [] and not ws.closed


async def test_beyond_the_per_user_limit_the_oldest_sockets_are_named() -> None:
    hub = Hub(max_per_user=2)
    first, second, third = (_connection(DrainingSocket(), connection_id=f"c{i}") for i in range(3))
    assert hub.add(first) == [] and hub.add(second) == []
    assert hub.add(third) == [first]
    first.close("socket_limit")
    # A socket being closed is no longer pushed to, nor counted.
    assert hub.connections("bob") == [second, third] and hub.connection("bob", "c0") is None
    assert hub.connection_count == 2
    fourth = _connection(DrainingSocket(), connection_id="c3")
    assert hub.add(fourth) == [second]
