"""Dead letters and the alert events they raise."""

from __future__ import annotations

from typing import Literal

from .common import Model, TimestampMs

Service = Literal["logic", "task", "gateway"]


class DeadLetter(Model):
    """A record a service gave up on, with where it came from and why.

    ``value_b64`` is the record's original bytes, so it can be replayed exactly as it
    was, even when it is not JSON.
    """

    service: Service
    source_topic: str
    partition: int
    offset: int
    key: str | None
    value_b64: str
    reason: str
    detail: str
    #: Attempts made before giving up (the spec's 3 for a failing handler; 0 for bad input).
    retry_count: int
    failed_at: TimestampMs


class Alert(Model):
    kind: Literal["dead_letter"] = "dead_letter"
    service: Service
    reason: str
    summary: str
    source_topic: str
    partition: int
    offset: int
    at: TimestampMs
