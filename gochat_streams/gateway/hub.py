"""Which sockets this gateway holds, per user, and what each socket is owed."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field

from aiohttp import web

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


@dataclass(eq=False)
class Connection:
    user_id: str
    connection_id: str
    ws: web.WebSocketResponse
    frames: TokenBucket
    #: message_id -> inbox seq of what was pushed here and not yet acknowledged.
    unacked: dict[str, int] = field(default_factory=dict)
    #: message_id -> when this socket sent it (monotonic seconds).
    _sent: OrderedDict[str, float] = field(default_factory=OrderedDict)
    #: "sender/message_id" of the messages pushed here, oldest first.
    _pushed: OrderedDict[str, None] = field(default_factory=OrderedDict)

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

    async def push(self, frame: str, sender: str, message_id: str, seq: int | None) -> bool:
        """Push a message frame unless this socket has it; whether the socket has it now."""
        key = f"{sender}/{message_id}"
        if key in self._pushed:
            messages_deduplicated.labels("socket").inc()
            return True
        # Owed before the send: while a slow socket drains, the client may already
        # have the frame and ack it, and an ack of nothing owed is ignored.
        self._pushed[key] = None
        if len(self._pushed) > _PUSHED_REMEMBERED:
            self._pushed.popitem(last=False)
        if seq is not None:
            self.unacked[message_id] = seq
            if len(self.unacked) > _UNACKED_KEPT:
                del self.unacked[next(iter(self.unacked))]
        if not await self.send(frame):
            self._pushed.pop(key, None)
            if seq is not None:
                self.unacked.pop(message_id, None)
            return False
        return True

    async def send(self, frame: str) -> bool:
        if self.ws.closed:
            return False
        try:
            await self.ws.send_str(frame)
        except ConnectionError as exc:
            log.info("socket of %s went away during push: %s", self.user_id, exc)
            return False
        return True


class Hub:
    def __init__(self) -> None:
        self._connections: defaultdict[str, dict[str, Connection]] = defaultdict(dict)

    def add(self, conn: Connection) -> None:
        self._connections[conn.user_id][conn.connection_id] = conn

    def remove(self, conn: Connection) -> None:
        conns = self._connections.get(conn.user_id)
        if conns is not None:
            conns.pop(conn.connection_id, None)
            if not conns:
                del self._connections[conn.user_id]

    def connections(self, user_id: str) -> list[Connection]:
        return list(self._connections.get(user_id, {}).values())

    def connection(self, user_id: str, connection_id: str) -> Connection | None:
        return self._connections.get(user_id, {}).get(connection_id)

    def all_connections(self) -> list[Connection]:
        return [conn for conns in self._connections.values() for conn in conns.values()]

    @property
    def connection_count(self) -> int:
        return sum(len(c) for c in self._connections.values())
