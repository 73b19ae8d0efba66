"""Offline pushers: where an ``offline_push`` task's notice goes.

``create_pusher(settings)`` picks one: a webhook (``GOCHAT_PUSH_WEBHOOK_URL``), POSTed the
notice as JSON, or by default a JSONL outbox file (``GOCHAT_PUSH_OUTBOX``), one line per
notice. A push that did not go out raises :class:`PushFailed`; the task service decides
whether to retry.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Protocol

import aiohttp

from .models import OfflinePushPayload, now_ms
from .settings import Settings

log = logging.getLogger(__name__)


class PushFailed(Exception):
    """A push that did not go out: timeout, connection error or a non-2xx answer."""


class Pusher(Protocol):
    async def push(self, notice: OfflinePushPayload) -> None: ...

    async def close(self) -> None: ...


class OutboxPusher:
    """Appends each notice, plus ``pushed_at`` (ms), as one JSON line to ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()

    async def push(self, notice: OfflinePushPayload) -> None:
        line = json.dumps({**notice.model_dump(mode="json"), "pushed_at": now_ms()}, ensure_ascii=False) + "\n"
        # Shielded: a cancelled caller must not release the lock while its line is still
        # being written (the line is then written, though push raised CancelledError).
        await asyncio.shield(self._write(line))
        log.info("offline push to %s (message %s) written to %s", notice.user_id, notice.message_id, self.path)

    async def _write(self, line: str) -> None:
        # In a thread, so a slow or full disk stalls only this pusher, not the event loop;
        # the lock (FIFO) keeps concurrent lines whole and in call order.
        async with self._lock:
            await asyncio.to_thread(self._append, line)

    def _append(self, line: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line)

    async def close(self) -> None:
        async with self._lock:  # waits for writes under way
            pass


class WebhookPusher:
    """POSTs each notice as JSON to ``url``; a 2xx answer within ``timeout_s`` means delivered."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def push(self, notice: OfflinePushPayload) -> None:
        if self._session is None:  # created here: a session belongs to the running loop
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        try:
            async with self._session.post(self.url, json=notice.model_dump(mode="json")) as response:
                if not 200 <= response.status < 300:
                    raise PushFailed(f"{self.url} answered {response.status} {response.reason}")
        except TimeoutError as exc:
            raise PushFailed(f"{self.url} did not answer within {self.timeout.total}s") from exc
        except aiohttp.ClientError as exc:
            raise PushFailed(f"{self.url}: {exc!r}") from exc
        log.info("offline push to %s (message %s) delivered to %s", notice.user_id, notice.message_id, self.url)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def create_pusher(settings: Settings) -> Pusher:
    if settings.push_webhook_url:
        return WebhookPusher(settings.push_webhook_url, settings.push_timeout_s)
    return OutboxPusher(settings.push_outbox_path)
