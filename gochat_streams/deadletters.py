"""Giving up on a record: its dead letter, an alert event, a count and a log line.

Bad input is dead-lettered at once (retrying cannot fix it); a record whose handling
fails is retried ``max_attempts`` times with doubling backoff first. Either way the
stream moves on to the next record, so no record stops a partition.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable

import faust
from faust.types import EventT

from .codecs import encode
from .metrics import dead_letters, processing_errors, retries
from .models import Alert, DeadLetter, now_ms
from .models.deadletters import Service
from .outbox import Outgoing, send_all
from .settings import Settings

log = logging.getLogger(__name__)


class DeadLetters:
    """Where one service buries what it gave up on."""

    def __init__(self, service: Service, dlq: faust.TopicT, alerts: faust.TopicT, settings: Settings) -> None:
        self.service: Service = service
        self.dlq = dlq
        self.alerts = alerts
        self.attempts = settings.max_attempts
        self.backoff_s = settings.retry_backoff_s
        self.namespace = settings.namespace

    async def handle(self, event: EventT, where: str, decide: Callable[[], list[Outgoing]]) -> list[Outgoing]:
        """Run a stateful handler once, then send what it decided, retrying the sends; what was sent.

        The handler is not retried: its table writes may have happened already (an
        inbox entry must not be kept twice), and a handler that raised on a record
        raises again on it. Its record is dead-lettered instead.
        """
        try:
            records = decide()
        except Exception as exc:
            log.exception("handling %s[%s]@%s failed", event.message.topic, event.message.partition,
                          event.message.offset)
            await self.bury(event, where, "processing_error", repr(exc))
            return []
        failure = await retrying(lambda: send_all(records), attempts=self.attempts, backoff_s=self.backoff_s,
                                 what=f"sending for {event.message.topic}@{event.message.offset}",
                                 service=self.service)
        if failure is not None:
            await self.bury(event, where, "processing_error", repr(failure), retry_count=self.attempts)
            return []
        return records

    async def bury(self, event: EventT, where: str, reason: str, detail: str, *, retry_count: int = 0) -> None:
        message = event.message
        raw_key = message.key
        key = raw_key.decode(errors="replace") if isinstance(raw_key, bytes) else raw_key
        raw_value = message.value if isinstance(message.value, bytes) else str(message.value).encode()
        letter, alert = dead_letter(self.service, where, message.topic, message.partition, message.offset, key,
                                    raw_value, reason, detail, retry_count)
        dlq = self.dlq.get_topic_name()
        await self.dlq.send(key=raw_key, value=encode(letter))
        await self.alerts.send(key=reason, value=encode(alert))
        buried(letter, dlq.removeprefix(self.namespace))


def dead_letter(service: Service, where: str, topic: str, partition: int, offset: int, key: str | None,
                value: bytes, reason: str, detail: str, retry_count: int) -> tuple[DeadLetter, Alert]:
    """The dead letter of a record, and the alert it raises."""
    now = now_ms()
    letter = DeadLetter(
        service=service, source_topic=topic, partition=partition, offset=offset, key=key,
        value_b64=base64.b64encode(value).decode(), reason=reason, detail=detail[:2000], retry_count=retry_count,
        failed_at=now,
    )
    alert = Alert(service=service, reason=reason, summary=f"{where}: {detail[:300]}", source_topic=topic,
                  partition=partition, offset=offset, at=now)
    return letter, alert


def buried(letter: DeadLetter, dlq: str) -> None:
    """Count and log a dead letter once it is on its topic, ``dlq`` (without namespace)."""
    processing_errors.labels(letter.service, letter.reason).inc()
    dead_letters.labels(dlq).inc()
    log.error("ALERT dead letter from %s[%s]@%s (%s): %s", letter.source_topic, letter.partition, letter.offset,
              letter.reason, letter.detail)


async def retrying(handle: Callable[[], Awaitable[object]], *, attempts: int, backoff_s: float, what: str,
                   service: Service, not_retried: tuple[type[Exception], ...] = ()) -> BaseException | None:
    """Run ``handle`` up to ``attempts`` times; None once it succeeds, else the last error.

    ``not_retried``: errors a retry cannot mend (bad input); they are raised at once.
    """
    error: BaseException | None = None
    for attempt in range(attempts):
        if attempt:
            retries.labels(service).inc()
            await asyncio.sleep(backoff_s * 2 ** (attempt - 1))
        try:
            await handle()
            return None
        except not_retried:
            raise
        except Exception as exc:  # any failure of a handler is retried, then dead-lettered
            error = exc
            log.warning("%s failed (attempt %d of %d): %r", what, attempt + 1, attempts, exc)
    return error
