"""Prometheus metrics shared by the worker and the gateway."""

from __future__ import annotations

import logging

from prometheus_client import Counter

log = logging.getLogger(__name__)

records_rejected = Counter(
    "gochat_records_rejected_total",
    "Records refused as bad input, by where and why",
    ["where", "reason"],
)
messages_routed = Counter(
    "gochat_messages_routed_total",
    "Messages routed by the logic service, by path",
    ["path"],
)


def reject(where: str, reason: str, detail: object) -> None:
    """Count and log one record refused as bad input; the caller moves on to the next."""
    records_rejected.labels(where, reason).inc()
    log.warning("rejected %s record (%s): %s", where, reason, detail)
tasks_done = Counter(
    "gochat_tasks_done_total",
    "Tasks the task service completed, by type",
    ["task_type"],
)
tasks_failed = Counter(
    "gochat_tasks_failed_total",
    "Tasks the task service could not complete, by type",
    ["task_type"],
)
dead_letters = Counter(
    "gochat_dead_letters_total",
    "Records given up on and written to a dead-letter topic, by service and reason",
    ["service", "reason"],
)
messages_deduplicated = Counter(
    "gochat_messages_deduplicated_total",
    "Copies dropped, by where: gateway (a client's resend), logic (delivered before), socket (pushed again)",
    ["where"],
)
