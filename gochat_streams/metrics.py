"""Prometheus metrics of the workers and the gateway; the names the alert rules read.

Every process serves them at ``/metrics`` (workers: Faust's web port, with Faust's own
``faust_*`` metrics; gateway: its HTTP port). Topic labels carry no namespace prefix.
``deploy/prometheus/alerts.yml`` holds the spec's four alert rules on these names;
gochat_streams/alerting.py evaluates the same rules in the app.
"""

from __future__ import annotations

import logging

import faust
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
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


def reject(where: str, reason: str, detail: object) -> None:
    """Count and log one record refused as bad input; the caller moves on to the next."""
    records_rejected.labels(where, reason).inc()
    log.warning("rejected %s record (%s): %s", where, reason, detail)


def count_consumed(service: str, topic: str, namespace: str, count: int = 1) -> None:
    messages_consumed.labels(service, topic.removeprefix(namespace)).inc(count)


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
