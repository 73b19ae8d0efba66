"""metrics.PrometheusMonitor counts what Faust's own sensor counts, with its children cached."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from faust.sensors.prometheus import FaustMetrics
from faust.types import TP
from prometheus_client import CollectorRegistry

from gochat_streams.metrics import PrometheusMonitor


def _monitor() -> tuple[PrometheusMonitor, CollectorRegistry]:
    registry = CollectorRegistry()
    return PrometheusMonitor(metrics=FaustMetrics.create(registry, "t")), registry


def test_records_in_are_counted_per_topic_and_the_offset_is_kept_per_partition() -> None:
    monitor, registry = _monitor()
    for offset in (7, 8, 9):
        monitor.on_message_in(TP("up", 0), offset, SimpleNamespace())
    monitor.on_message_in(TP("up", 1), 3, SimpleNamespace())
    monitor.on_message_in(TP("user", 0), 1, SimpleNamespace())
    assert registry.get_sample_value("t_messages_received_total") == 5
    assert registry.get_sample_value("t_messages_received_per_topic_total", {"topic": "up"}) == 4
    assert registry.get_sample_value("t_messages_received_per_topic_total", {"topic": "user"}) == 1
    assert registry.get_sample_value("t_messages_received_per_topics_partition",
                                     {"topic": "up", "partition": "0"}) == 9
    assert registry.get_sample_value("t_messages_received_per_topics_partition",
                                     {"topic": "up", "partition": "1"}) == 3


def test_table_operations_and_sends_are_counted_by_their_labels() -> None:
    monitor, registry = _monitor()
    inbox, presence = SimpleNamespace(name="inbox"), SimpleNamespace(name="presence")
    for _ in range(3):
        monitor.on_table_set(inbox, "k", 1)
    monitor.on_table_get(inbox, "k")
    monitor.on_table_del(presence, "k")
    monitor.on_send_initiated(None, "down", None, 1, 1)
    monitor.on_send_initiated(None, "down", None, 1, 1)

    def ops(table: str, operation: str) -> float | None:
        return registry.get_sample_value("t_table_operations_total", {"table": f"table.{table}", "operation": operation})

    assert (ops("inbox", "keys_updated"), ops("inbox", "keys_retrieved"), ops("presence", "keys_deleted")) == (3, 1, 1)
    assert ops("presence", "keys_updated") is None
    assert registry.get_sample_value("t_topic_messages_sent_total", {"topic": "topic.down"}) == 2


async def test_it_stops_cleanly_after_counting(caplog: pytest.LogCaptureFixture) -> None:
    # The cache once shadowed mode's Service._children, and stopping tried to stop its keys.
    monitor, _ = _monitor()
    await monitor.start()
    monitor.on_table_get(SimpleNamespace(name="inbox"), "k")
    await monitor.stop()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
