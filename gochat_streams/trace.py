"""Message traces: one JSON line per hop of a message, so ``grep <message_id>`` shows its path.

Hops: ``gateway_in`` (the broker took the sender's message), ``logic`` (route_upstream),
``group`` (route_group), ``deliver`` (routed to a user: online, offline, again or
dropped), ``task`` (persisted, pushed, fanned out), ``gateway_out`` (pushed to a
socket). Each line names the record the hop read (topic, partition, offset) and the
milliseconds the hop took. Logged at INFO on the ``gochat.trace`` logger, so
``GOCHAT_LOG_LEVEL=WARNING`` (or that logger's level) turns traces off.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from faust.types import EventT

log = logging.getLogger("gochat.trace")


def hop(name: str, message_id: str, *, topic: str | None = None, partition: int | None = None,
        offset: int | None = None, started: float | None = None, **extra: Any) -> None:
    """Log one hop; ``started`` is a ``time.perf_counter()`` taken when the hop began."""
    if not log.isEnabledFor(logging.INFO):
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
