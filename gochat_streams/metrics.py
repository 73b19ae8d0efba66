"""Prometheus metrics shared by the worker and the gateway."""

from __future__ import annotations

from prometheus_client import Counter

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
