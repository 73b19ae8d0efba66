"""Giving up on a record: its dead letter, an alert event, a count and a log line.

Bad input is dead-lettered at once (retrying cannot fix it); a record whose handling
fails is retried ``max_attempts`` times with doubling backoff first. Either way the
stream moves on to the next record, so no record stops a partition. A record too big to
copy whole into its letter is copied truncated. Writing the letter is retried until it
succeeds: the record's offset is not committed before its letter is written, so while
the dead-letter topic cannot be written the partition waits, and says so.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
from collections.abc import Awaitable, Callable

import faust
from faust.types import EventT

from .codecs import encode
from .compat.faust import flush_changelog
from .metrics import dead_letter_write_failures, dead_letters, processing_errors, retries
from .models import Alert, DeadLetter, now_ms
from .models.deadletters import Service
from .outbox import Outgoing, send_all
from .settings import DEFAULT_MAX_REQUEST_BYTES, Settings

log = logging.getLogger(__name__)

#: Room for what a produce request adds around a letter's key and value (aiokafka's
#: estimate: a 61-byte batch header and a record header of a few varints), with margin.
_RECORD_OVERHEAD_BYTES = 512
#: A key longer than this (a foreign producer's) is cut in the letter: ours are ids.
_MAX_KEY_CHARS = 1024
#: The longest wait between attempts at writing a dead letter.
_MAX_WRITE_BACKOFF_S = 30.0
#: The shortest, so that a retry_backoff_s of 0 does not spin.
_MIN_WRITE_BACKOFF_S = 0.1


class DeadLetters:
    """Where one service buries what it gave up on."""

    def __init__(self, service: Service, dlq: faust.TopicT, alerts: faust.TopicT, settings: Settings) -> None:
        self.service: Service = service
        self.dlq = dlq
        self.alerts = alerts
        self.attempts = settings.max_attempts
        self.backoff_s = settings.retry_backoff_s
        self.namespace = settings.namespace
        self.max_request_bytes = settings.producer_max_request_bytes

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
            await flush_changelog(event.app)  # the writes it made before it raised, as Faust's path would
            await self.bury(event, where, "processing_error", repr(exc))
            return []
        await flush_changelog(event.app)  # the table writes' changelog records, in order, before the sends
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
                                    raw_value, reason, detail, retry_count, max_bytes=self.max_request_bytes)
        if letter.truncated:  # the key may be cut too: the letter's record carries what the letter says
            raw_key = letter.key.encode() if letter.key is not None else None
        dlq = self.dlq.get_topic_name()
        await self._write(letter, "dead letter", lambda: self.dlq.send(key=raw_key, value=encode(letter)))
        await self._write(letter, "alert", lambda: self.alerts.send(key=reason, value=encode(alert)))
        buried(letter, dlq.removeprefix(self.namespace))

    async def _write(self, letter: DeadLetter, what: str, send: Callable[[], Awaitable[object]]) -> None:
        """Send until the producer takes it, backing off; the agent, and so the partition, waits.

        Giving up would let the offset be committed with the record nowhere; raising would
        crash the agent, which Faust restarts seconds later to fail the same way.
        """
        for failures in itertools.count(1):
            try:
                await send()
                return
            except Exception as exc:  # the broker, the producer, or a letter bigger than we sized it
                dead_letter_write_failures.labels(self.service).inc()
                wait_s = min(max(self.backoff_s, _MIN_WRITE_BACKOFF_S) * 2 ** (failures - 1), _MAX_WRITE_BACKOFF_S)
                log.error("ALERT writing the %s of %s[%s]@%s failed %d times (%r): its partition waits; "
                          "next attempt in %.1f s", what, letter.source_topic, letter.partition, letter.offset,
                          failures, exc, wait_s)
                await asyncio.sleep(wait_s)


def dead_letter(service: Service, where: str, topic: str, partition: int, offset: int, key: str | None,
                value: bytes, reason: str, detail: str, retry_count: int, *,
                max_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> tuple[DeadLetter, Alert]:
    """The dead letter of a record, and the alert it raises.

    The letter, sent with its key, fits in a produce request of ``max_bytes`` (the
    producer's ``max_request_size``): a record too big for that is copied truncated to
    its beginning, with its size.
    """
    now = now_ms()
    cut_key = key is not None and len(key) > _MAX_KEY_CHARS
    if key is not None:
        key = key[:_MAX_KEY_CHARS]
    letter = DeadLetter(
        service=service, source_topic=topic, partition=partition, offset=offset, key=key, value_b64="",
        reason=reason, detail=detail[:2000], retry_count=retry_count, failed_at=now, value_size=len(value),
        truncated=True,  # the longer spelling while the room is measured
    )
    # The record key is at most 4 bytes a character (a replaced undecodable byte: 1).
    room_b64 = max_bytes - _RECORD_OVERHEAD_BYTES - 4 * len(key or "") - len(encode(letter))
    whole = 4 * -(-len(value) // 3) <= room_b64 and not cut_key
    kept = value if whole else value[:max(room_b64, 0) // 4 * 3]
    letter = letter.model_copy(update={"value_b64": base64.b64encode(kept).decode(), "truncated": not whole})
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
