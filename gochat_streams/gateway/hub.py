"""Which sockets this gateway holds, per user, and what each socket is owed and waiting for.

Each socket has a bounded send queue and a writer task of its own (:meth:`Connection.write`):
the downstream consumer only queues frames, so a client that stops reading holds up no
one else. A socket whose queue is full, or whose write does not drain within the send
timeout, is closed (going-away); what it was pushed and did not acknowledge stays in its
user's inbox and comes again on the next connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, defaultdict, deque
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import WSCloseCode, web

from ..metrics import messages_deduplicated

log = logging.getLogger(__name__)

#: Message ids a socket sent that the gateway remembers: to keep echoes and refusals
#: of a message away from / addressed to the socket that sent it, and to drop a resend.
_SENT_REMEMBERED = 1024
#: Pushed-and-unacknowledged entries a socket keeps: a client that never acks must not
#: grow the gateway without bound (an entry dropped here comes again on reconnect).
_UNACKED_KEPT = 10_000
#: Messages (sender/message_id) a socket was pushed that the gateway remembers, to drop
#: a copy: the logic service pushes again what a crash or a resend makes it handle
#: twice, and that happens within the seconds since its last commit.
_PUSHED_REMEMBERED = 4096
#: How long a closing handshake may take before the connection is cut.
_CLOSE_TIMEOUT_S = 1.0

#: Why the gateway closed a socket (the ``reason`` label of gochat_sockets_closed_total).
CloseReason = Literal["queue_full", "send_timeout", "token_expired", "socket_limit"]
_CLOSE_CODES: dict[CloseReason, WSCloseCode] = {
    "queue_full": WSCloseCode.GOING_AWAY,
    "send_timeout": WSCloseCode.GOING_AWAY,
    "token_expired": WSCloseCode.POLICY_VIOLATION,
    "socket_limit": WSCloseCode.GOING_AWAY,
}


class TokenBucket:
    """``rate`` frames a second on average, bursts of up to ``burst``."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.updated = burst, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass(frozen=True)
class SendLimits:
    """How far a socket may fall behind before the gateway closes it."""

    #: Frames waiting for the socket, reconnect sync aside.
    queue_max: int
    #: Reconnect-sync frames waiting: a sync is at most the user's inbox (its own bound), so
    #: a new socket is never closed for being sent its backlog faster than it can read it.
    sync_max: int
    #: The longest one write may wait for the client to read.
    timeout_s: float


@dataclass(eq=False)
class Connection:
    user_id: str
    connection_id: str
    ws: web.WebSocketResponse
    frames: TokenBucket
    limits: SendLimits
    #: Cut when a socket that does not read is closed: its unsent bytes are dropped.
    transport: asyncio.BaseTransport | None = None
    #: message_id -> inbox seq of what was pushed here and not yet acknowledged.
    unacked: dict[str, int] = field(default_factory=dict)
    #: Why the gateway is closing this socket; nothing more is queued once set.
    closing: CloseReason | None = None
    #: message_id -> when this socket sent it (monotonic seconds).
    _sent: OrderedDict[str, float] = field(default_factory=OrderedDict)
    #: "sender/message_id" of the messages pushed here, oldest first.
    _pushed: OrderedDict[str, None] = field(default_factory=OrderedDict)
    #: Frames for the writer, oldest first, each marked if it is reconnect sync.
    _queue: deque[tuple[str, bool]] = field(default_factory=deque)
    _queued_sync: int = 0
    #: Set when the writer has something to do: a frame, or the close.
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    #: The close waits for the queued frames (a last error frame) rather than dropping them.
    _drain_first: bool = False
    #: The client stopped reading: its connection is cut rather than closed politely.
    _stalled: bool = False

    def remember_sent(self, message_id: str) -> None:
        self._sent[message_id] = time.monotonic()
        self._sent.move_to_end(message_id)
        if len(self._sent) > _SENT_REMEMBERED:
            self._sent.popitem(last=False)

    def forget_sent(self, message_id: str) -> None:
        self._sent.pop(message_id, None)

    def sent(self, message_id: str) -> bool:
        return message_id in self._sent

    def sent_within(self, message_id: str, window_s: float) -> bool:
        at = self._sent.get(message_id)
        return at is not None and time.monotonic() - at <= window_s

    def push(self, frame: str, sender: str, message_id: str, seq: int | None, *, sync: bool = False) -> bool:
        """Queue a message frame unless this socket has it; whether the socket has it or will be sent it."""
        if self.closing is not None:
            return False
        key = f"{sender}/{message_id}"
        if key in self._pushed:
            messages_deduplicated.labels("socket").inc()
            return True
        # Owed before the send: the client may have the frame and ack it before the
        # writer's send returns, and an ack of nothing owed is ignored.
        self._pushed[key] = None
        if len(self._pushed) > _PUSHED_REMEMBERED:
            self._pushed.popitem(last=False)
        if seq is not None:
            self.unacked[message_id] = seq
            if len(self.unacked) > _UNACKED_KEPT:
                del self.unacked[next(iter(self.unacked))]
        return self.enqueue(frame, sync=sync)

    def enqueue(self, frame: str, *, sync: bool = False) -> bool:
        """Queue a frame for the writer; a queue already full closes the socket instead."""
        if self.closing is not None:
            return False
        if (self._queued_sync >= self.limits.sync_max if sync
                else len(self._queue) - self._queued_sync >= self.limits.queue_max):
            self._stalled = True
            self.close("queue_full")
            return False
        self._queue.append((frame, sync))
        self._queued_sync += sync
        self._wake.set()
        return True

    def close(self, reason: CloseReason, last_frame: str | None = None) -> None:
        """Have the writer close the socket: at once, or after what is queued and ``last_frame``."""
        if self.closing is not None:
            return
        if last_frame is None:
            self._drop_queue()
        else:
            self._queue.append((last_frame, False))
            self._drain_first = True
        self.closing = reason
        self._wake.set()
        log.info("closing a socket of %s: %s", self.user_id, reason)

    def _drop_queue(self) -> None:
        self._queue.clear()
        self._queued_sync = 0
        self._drain_first = False

    async def write(self) -> None:
        """The socket's writer: sends the queued frames in order until the socket is closed."""
        while True:
            await self._wake.wait()
            if self._queue and (self.closing is None or self._drain_first):
                frame, sync = self._queue.popleft()
                self._queued_sync -= sync
                try:
                    async with asyncio.timeout(self.limits.timeout_s):
                        await self.ws.send_str(frame)
                except TimeoutError:
                    self._stalled = True
                    self.close("send_timeout")
                    self._drop_queue()  # a close that was to follow the queue comes now
                except ConnectionError:  # the client went away; its handler ends the socket
                    return
            elif self.closing is not None:
                await self.close_socket(_CLOSE_CODES[self.closing], self.closing)
                return
            else:
                self._wake.clear()

    async def close_socket(self, code: WSCloseCode, message: str) -> None:
        """Close the WebSocket now (the writer does it for :meth:`close`; the gateway at shutdown)."""
        # A client that does not read never answers the closing handshake: cut it short.
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await self.ws.close(code=code, message=message.encode(), drain=False)
        if self._stalled and self.transport is not None:
            self.transport.abort()  # what it did not read is dropped, not held for it


class Hub:
    """The open sockets of this gateway, per user, oldest first."""

    def __init__(self, max_per_user: int) -> None:
        self.max_per_user = max_per_user
        self._connections: defaultdict[str, dict[str, Connection]] = defaultdict(dict)

    def add(self, conn: Connection) -> list[Connection]:
        """Hold ``conn``; the user's oldest open sockets beyond ``max_per_user``, for the caller to close."""
        conns = self._connections[conn.user_id]
        conns[conn.connection_id] = conn
        open_ = [c for c in conns.values() if c.closing is None]
        return open_[:max(0, len(open_) - self.max_per_user)]

    def remove(self, conn: Connection) -> None:
        conns = self._connections.get(conn.user_id)
        if conns is not None:
            conns.pop(conn.connection_id, None)
            if not conns:
                del self._connections[conn.user_id]

    def connections(self, user_id: str) -> list[Connection]:
        """The user's sockets that are not being closed."""
        return [c for c in self._connections.get(user_id, {}).values() if c.closing is None]

    def connection(self, user_id: str, connection_id: str) -> Connection | None:
        conn = self._connections.get(user_id, {}).get(connection_id)
        return conn if conn is not None and conn.closing is None else None

    def all_connections(self) -> list[Connection]:
        return [conn for conns in self._connections.values() for conn in conns.values()]

    @property
    def connection_count(self) -> int:
        """Open sockets (being closed ones aside)."""
        return sum(c.closing is None for conns in self._connections.values() for c in conns.values())
