"""Prometheus metrics of the workers and the gateway; the names the alert rules read.

Every process serves them at ``/metrics`` (workers: Faust's web port, with Faust's own
``faust_*`` metrics; gateway: its HTTP port), to operators only (operator.py: the
token, or loopback without one). Topic labels carry no namespace prefix.
``deploy/prometheus/alerts.yml`` holds the spec's four alert rules on these names;
gochat_streams/alerting.py evaluates the same rules in the app.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Hashable
from typing import Any

import faust
from faust.sensors.monitor import Monitor
from faust.sensors.prometheus import FaustMetrics
from faust.sensors.prometheus import PrometheusMonitor as FaustPrometheusMonitor
from faust.types import TP, CollectionT, EventT, Message, ProducerT, StreamT
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger(__name__)

#: How often a worker updates gochat_table_keys.
TABLE_SIZES_INTERVAL_S = 30.0

messages_consumed = Counter(
    "gochat_messages_consumed_total",
    "Records a service took from a topic and handled (dead-lettered ones included)",
    ["service", "topic"],
)
processing_errors = Counter(
    "gochat_processing_errors_total",
    "Records whose handling failed, by kind: bad input at once, a failing handler after its retries",
    ["service", "kind"],
)
dead_letters = Counter(
    "gochat_dead_letters_total",
    "Records written to a dead-letter topic, by that topic",
    ["topic"],
)
dead_letter_write_failures = Counter(
    "gochat_dead_letter_write_failures_total",
    "Failed attempts at writing a dead letter or its alert; the record's partition waits until one succeeds",
    ["service"],
)
content_undecryptable = Counter(
    "gochat_content_undecryptable_total",
    "Sealed message content that did not open (content_crypto.py): its key is not in the keyring, or it was altered",
    ["service", "reason"],
)
retries = Counter(
    "gochat_retries_total",
    "Attempts made again after a failure (sends, store writes, pushes)",
    ["service"],
)
e2e_latency = Histogram(
    "gochat_e2e_latency_seconds",
    "From the message's timestamp (the client's, else the sending gateway's) to the push to a recipient's socket",
    ["gateway"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
consumer_lag = Gauge(
    "gochat_consumer_lag",
    "Records a consumer group has not committed yet, per partition (high watermark - committed offset)",
    ["group", "topic", "partition"],
)
topic_records = Gauge(
    "gochat_topic_records",
    "Records ever written to a topic: the sum of its partitions' high watermarks (rate() gives messages/s)",
    ["topic"],
)
table_keys = Gauge(
    "gochat_table_keys",
    "Keys of a table held by this worker (RocksDB's estimate)",
    ["table"],
)
gateway_connections = Gauge(
    "gochat_gateway_connections",
    "WebSockets a gateway holds",
    ["gateway"],
)
sockets_closed = Counter(
    "gochat_sockets_closed_total",
    "WebSockets a gateway closed, by why: queue_full or send_timeout (the client stopped reading), "
    "token_expired, socket_limit (the user's oldest beyond the per-user limit)",
    ["gateway", "reason"],
)
records_rejected = Counter(
    "gochat_records_rejected_total",
    "Records and client frames refused as bad input, by where and why",
    ["where", "reason"],
)
messages_routed = Counter(
    "gochat_messages_routed_total",
    "Messages routed by the logic service, by path",
    ["path"],
)
messages_deduplicated = Counter(
    "gochat_messages_deduplicated_total",
    "Copies dropped, by where: gateway (a client's resend), logic (delivered before), socket (pushed again)",
    ["where"],
)
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
history_invalidation_failures = Counter(
    "gochat_history_invalidation_failures_total",
    "History cache invalidations that failed after the messages were stored, by stage: after_store "
    "(then retried on their own), retry, expired (given up: the cached list has expired by then)",
    ["stage"],
)
history_cache_errors = Counter(
    "gochat_history_cache_errors_total",
    "History reads that Redis failed and the message store served instead",
)
# Audit log (audit.py)
audit_events = Counter(
    "gochat_audit_events_total",
    "Audit events recorded (logged, and queued for im-audit-topic unless unchained), by outcome",
    ["service", "outcome"],
)
audit_write_failures = Counter(
    "gochat_audit_write_failures_total",
    "Failed attempts at writing queued audit events to im-audit-topic; they wait and are retried in order",
    ["service"],
)
audit_events_unchained = Counter(
    "gochat_audit_events_unchained_total",
    "Audit events logged but left out of the chain and the topic: the queue for the broker was full",
    ["service"],
)


def reject(where: str, reason: str, detail: object) -> None:
    """Count and log one record refused as bad input; the caller moves on to the next."""
    records_rejected.labels(where, reason).inc()
    log.warning("rejected %s record (%s): %s", where, reason, detail)


@functools.cache
def _consumed(service: str, topic: str, namespace: str) -> Any:
    return messages_consumed.labels(service, topic.removeprefix(namespace))


def count_consumed(service: str, topic: str, namespace: str, count: int = 1) -> None:
    # The labelled child looked up once: .labels() takes a lock and builds its key every call.
    _consumed(service, topic, namespace).inc(count)


class PrometheusMonitor(FaustPrometheusMonitor):
    """Faust's Prometheus sensor, with each labelled child looked up once rather than per call.

    Faust calls ``.labels()`` for every record in, event, send and table access: 8% of a
    worker's busy time in ``bench logic --profile``. The metrics are the same.
    """

    def __init__(self, metrics: FaustMetrics, **kwargs: Any) -> None:
        super().__init__(metrics, **kwargs)
        self._labelled: dict[Hashable, Any] = {}

    def _child(self, key: Hashable, metric: Any, **labels: object) -> Any:
        child = self._labelled.get(key)
        if child is None:
            child = self._labelled[key] = metric.labels(**labels)
        return child

    def on_message_in(self, tp: TP, offset: int, message: Message) -> None:
        Monitor.on_message_in(self, tp, offset, message)
        m = self._metrics
        m.messages_received.inc()
        m.active_messages.inc()
        self._child(("in", tp.topic), m.messages_received_per_topics, topic=tp.topic).inc()
        self._child(tp, m.messages_received_per_topics_partition, topic=tp.topic, partition=tp.partition).set(offset)

    def on_stream_event_in(self, tp: TP, offset: int, stream: StreamT, event: EventT) -> dict | None:
        state = Monitor.on_stream_event_in(self, tp, offset, stream, event)
        m = self._metrics
        m.total_events.inc()
        m.total_active_events.inc()
        child = self._labelled.get(stream)
        if child is None:  # not _child: the stream's label is worth building only on a miss
            child = self._labelled[stream] = m.total_events_per_stream.labels(
                stream=f"stream.{self._stream_label(stream)}.events")
        child.inc()
        return state

    def _table_op(self, table: CollectionT, operation: str) -> None:
        self._child((table.name, operation), self._metrics.table_operations, table=f"table.{table.name}",
                    operation=operation).inc()

    def on_table_get(self, table: CollectionT, key: Any) -> None:
        Monitor.on_table_get(self, table, key)
        self._table_op(table, self.KEYS_RETRIEVED)

    def on_table_set(self, table: CollectionT, key: Any, value: Any) -> None:
        Monitor.on_table_set(self, table, key, value)
        self._table_op(table, self.KEYS_UPDATED)

    def on_table_del(self, table: CollectionT, key: Any) -> None:
        Monitor.on_table_del(self, table, key)
        self._table_op(table, self.KEYS_DELETED)

    def on_send_initiated(self, producer: ProducerT, topic: str, message: Any, keysize: int, valsize: int) -> Any:
        self._child(("sent", topic), self._metrics.topic_messages_sent, topic=f"topic.{topic}").inc()
        return Monitor.on_send_initiated(self, producer, topic, message, keysize, valsize)


def serve_metrics(app: faust.App, prefix: str) -> None:
    """``/metrics`` on a worker's web port: ours, and Faust's own (``{prefix}_*``: events, commits,
    sends, rebalances, per-partition offsets), from a registry of the app's own so that
    building an app twice in one process (tests) does not register them twice."""
    registry = CollectorRegistry()
    app.monitor = PrometheusMonitor(metrics=FaustMetrics.create(registry, prefix.replace("-", "_")))

    @app.timer(interval=TABLE_SIZES_INTERVAL_S)
    async def table_sizes() -> None:
        for name, table in app.tables.items():
            table_keys.labels(name).set(_estimated_keys(table))

    @app.page("/metrics")
    async def metrics(self: View, request: Request) -> Response:
        return self.bytes(generate_latest(REGISTRY) + generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def _estimated_keys(table: faust.types.CollectionT) -> int:
    """RocksDB's estimate for each partition's database (counting would read every key)."""
    store = table.data
    dbs = getattr(store, "_dbs", None)  # faust's rocksdb store: partition -> rocksdict.Rdict
    if dbs is None:
        return len(store)
    return sum(db.property_int_value("rocksdb.estimate-num-keys") or 0 for db in dbs.values())
