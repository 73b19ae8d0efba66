"""Message traces: one JSON line per hop of a message, so ``grep <message_id>`` shows its path.

Hops: ``gateway_in`` (the broker took the sender's message), ``logic`` (route_upstream),
``group`` (route_group), ``deliver`` (routed to a user: online, offline, again or
dropped), ``task`` (persisted, pushed, fanned out), ``gateway_out`` (pushed to a
socket). Each line names the record the hop read (topic, partition, offset) and the
milliseconds the hop took. Logged at INFO on the ``gochat.trace`` logger, so
``GOCHAT_LOG_LEVEL=WARNING`` (or that logger's level) turns traces off.

Traces are sampled by message id (``GOCHAT_TRACE_SAMPLE_RATE``), the same way in every
process, so a sampled message has all its hops and the others cost nothing: a line
per hop of every message would cost a worker a third of its throughput.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from typing import Any

from faust.types import EventT

log = logging.getLogger("gochat.trace")

_BUCKETS = 10_000
#: Messages whose id hashes below this bucket are traced (set by :func:`configure`).
_sampled_below = _BUCKETS


def configure(sample_rate: float) -> None:
    """Trace this fraction of messages (0 to 1) in this process."""
    global _sampled_below
    _sampled_below = round(sample_rate * _BUCKETS)


def sampled(message_id: str) -> bool:
    return zlib.crc32(message_id.encode()) % _BUCKETS < _sampled_below


def hop(name: str, message_id: str, *, topic: str | None = None, partition: int | None = None,
        offset: int | None = None, started: float | None = None, **extra: Any) -> None:
    """Log one hop; ``started`` is a ``time.perf_counter()`` taken when the hop began."""
    if not sampled(message_id) or not log.isEnabledFor(logging.INFO):
        return
    line: dict[str, Any] = {"trace": name, "message_id": message_id, "topic": topic, "partition": partition,
                            "offset": offset}
    if started is not None:
        line["elapsed_ms"] = round((time.perf_counter() - started) * 1000, 3)
    line.update(extra)
    log.info(json.dumps(line, ensure_ascii=False, separators=(",", ":")))


def event_hop(name: str, message_id: str, event: EventT, started: float, **extra: Any) -> None:
    """:func:`hop` for a Faust event: the record it read, and the time since ``started``."""
    record = event.message
    hop(name, message_id, topic=record.topic, partition=record.partition, offset=record.offset, started=started,
        **extra)
