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

from .content_crypto import ContentKeyring, UnopenedContent, content_keyring, open_content
from .metrics import content_undecryptable
from .models import OfflinePushPayload, now_ms
from .models.messages import is_sealed
from .routing import push_preview
from .settings import Settings

log = logging.getLogger(__name__)


class PushFailed(Exception):
    """A push that did not go out: timeout, connection error or a non-2xx answer."""


class Pusher(Protocol):
    async def push(self, notice: OfflinePushPayload) -> None: ...

    async def close(self) -> None: ...


def opened_notice(keys: ContentKeyring | None, notice: OfflinePushPayload) -> OfflinePushPayload:
    """The notice with its preview made from the sealed text it carries, or :class:`PushFailed`."""
    if not is_sealed("text", notice.content) or notice.from_user_id is None or notice.conversation_id is None:
        return notice
    try:
        if keys is None:
            raise UnopenedContent("unknown_key", f"message {notice.message_id} is sealed; there is no content keyring")
        text, _ = open_content(keys, "text", notice.conversation_id, notice.from_user_id, notice.message_id,
                               notice.content)
    except UnopenedContent as exc:
        content_undecryptable.labels("task", exc.reason).inc()
        raise PushFailed(f"no preview: {exc.detail}") from None
    return notice.model_copy(update={"content": push_preview(notice.from_user_id, "text", text),
                                     "from_user_id": None, "conversation_id": None})


class OutboxPusher:
    """Appends each notice, plus ``pushed_at`` (ms), as one JSON line to ``path``.

    A file at rest: a sealed text's notice is written sealed, as the task carried it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()

    async def push(self, notice: OfflinePushPayload) -> None:
        line = json.dumps({**notice.model_dump(mode="json", exclude_none=True), "pushed_at": now_ms()},
                          ensure_ascii=False) + "\n"
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
    """POSTs each notice as JSON to ``url``; a 2xx answer within ``timeout_s`` means delivered.

    The push provider shows the preview to the user: a sealed text is opened for it here.
    """

    def __init__(self, url: str, timeout_s: float, keys: ContentKeyring | None) -> None:
        self.url = url
        self.keys = keys
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def push(self, notice: OfflinePushPayload) -> None:
        notice = opened_notice(self.keys, notice)
        if self._session is None:  # created here: a session belongs to the running loop
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        try:
            async with self._session.post(self.url, json=notice.model_dump(mode="json", exclude_none=True)) as response:
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
    """:class:`ContentKeysMissing` for a webhook without content keys, unless encryption is off."""
    if settings.push_webhook_url:
        return WebhookPusher(settings.push_webhook_url, settings.push_timeout_s, content_keyring(settings))
    return OutboxPusher(settings.push_outbox_path)
