"""Which sockets this gateway holds, per user."""

from __future__ import annotations

import logging
from collections import defaultdict

from aiohttp import web

log = logging.getLogger(__name__)


class Hub:
    def __init__(self) -> None:
        self._sockets: defaultdict[str, set[web.WebSocketResponse]] = defaultdict(set)

    def add(self, user_id: str, ws: web.WebSocketResponse) -> None:
        self._sockets[user_id].add(ws)

    def remove(self, user_id: str, ws: web.WebSocketResponse) -> None:
        sockets = self._sockets.get(user_id)
        if sockets is not None:
            sockets.discard(ws)
            if not sockets:
                del self._sockets[user_id]

    def sockets(self, user_id: str) -> list[web.WebSocketResponse]:
        return list(self._sockets.get(user_id, ()))

    def all_sockets(self) -> list[web.WebSocketResponse]:
        return [ws for sockets in self._sockets.values() for ws in sockets]

    @property
    def connection_count(self) -> int:
        return sum(len(s) for s in self._sockets.values())

    async def push(self, user_id: str, frame: str) -> int:
        """Send ``frame`` to every open socket of ``user_id``; how many took it."""
        sent = 0
        for ws in self.sockets(user_id):
            if ws.closed:
                continue
            try:
                await ws.send_str(frame)
                sent += 1
            except ConnectionError as exc:
                log.info("socket of %s went away during push: %s", user_id, exc)
        return sent
