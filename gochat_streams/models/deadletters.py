"""Dead letters, and the alert events on ``im-alert-topic``: a dead letter's, and a rule's."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from .common import Model, TimestampMs

Service = Literal["logic", "task", "gateway", "monitor"]


class DeadLetter(Model):
    """A record a service gave up on, with where it came from and why.

    ``value_b64`` is the record's original bytes, so it can be replayed exactly as it
    was, even when it is not JSON; unless ``truncated``.
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
    #: The record's value size in bytes (None in letters written before it was recorded).
    value_size: int | None = None
    #: ``value_b64`` (and ``key``, if very long) hold only the record's beginning: the whole
    #: would not fit in a produce request. Such a letter is not replayed: it is not the record.
    truncated: bool = False


class Alert(Model):
    kind: Literal["dead_letter"] = "dead_letter"
    service: Service
    reason: str
    summary: str
    source_topic: str
    partition: int
    offset: int
    at: TimestampMs


class RuleAlert(Model):
    """One of the spec's alert rules started or stopped firing (gochat_streams/alerting.py)."""

    kind: Literal["rule"] = "rule"
    service: Service
    rule: Literal["consumer_lag", "throughput_drop", "e2e_latency", "error_rate"]
    state: Literal["firing", "resolved"]
    labels: dict[str, str]
    value: float
    threshold: float
    summary: str
    at: TimestampMs


AlertEvent = Annotated[Alert | RuleAlert, Field(discriminator="kind")]
ALERT_ADAPTER: TypeAdapter[AlertEvent] = TypeAdapter(AlertEvent)
