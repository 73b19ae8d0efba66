"""The monitor: what only the broker can tell, the alert rules on it, and the ops page.

A consumer cannot report its own lag once it is dead, so lag is read from outside. Every
``GOCHAT_MONITOR_INTERVAL_S`` the monitor reads each consumer group's committed offsets
and each topic's high watermark. The same reads give the records written to each topic
(``gochat_topic_records``): messages/s, the throughput (records written to
``im-upstream-topic``, what clients send, whatever the consumers' health), and the
error rate (records written to the dead-letter topics per record written to
``im-upstream-topic`` and ``im-task-topic``). On them it evaluates three of the spec's
alert rules (lag, throughput drop, error rate); each gateway evaluates the fourth on the
latencies it measures (gateway/server.py). A rule that starts or stops firing becomes
an event on ``im-alert-topic`` and a log line. The monitor tails that topic for the ops
page's firing alerts, and serves:

- ``/``: the ops page (``web/ops.html``); ``/api/overview``: its data
- ``/metrics``: ``gochat_consumer_lag`` per partition, ``gochat_topic_records``; ``/healthz``

Operator endpoints (operator.py): all but ``/healthz`` and the page itself, which holds
no data (it asks for the token and sends it with each fetch), want the operator token.

Run one: ``python -m gochat_streams monitor`` (one is enough; two raise alerts twice).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from . import topics
from .alerting import INPUT_RECORDS, CONSUMER_LAG, ERRORS, UPSTREAM_RECORDS, AlertChange, Alerting, Observations
from .codecs import DecodeError, decode_alert, encode
from .kafka import client_kwargs, producer_kwargs, topic_partitions
from .metrics import consumer_lag, topic_records
from .models import RuleAlert
from .models.deadletters import Service
from .audit import AuditLog, producer_send
from .operator import check_listen, operator_headers, operator_middleware
from .serving import cancel_all, serve
from .settings import Settings

log = logging.getLogger(__name__)

#: How far back the ops page's rates and latency percentiles look.
OVERVIEW_WINDOW_S = 60.0
_LATENCY_BUCKETS = "gochat_e2e_latency_seconds"

TP = tuple[str, int]


async def publish_rule_alerts(producer: AIOKafkaProducer, s: Settings, service: Service,
                              changes: Iterable[AlertChange], labels: dict[str, str] | None = None) -> None:
    """Each change as an event on ``im-alert-topic`` and an ``ALERT`` log line."""
    for change in changes:
        event = RuleAlert(service=service, rule=change.rule, state=change.state,
                          labels={**change.labels, **(labels or {})}, value=change.value,
                          threshold=change.threshold, summary=change.summary, at=int(change.at * 1000))
        level = logging.ERROR if change.state == "firing" else logging.WARNING
        log.log(level, "ALERT %s %s %s: %s", change.state, change.rule, json.dumps(event.labels), change.summary)
        await producer.send_and_wait(topics.alert(s).name, key=change.rule.encode(), value=encode(event))


@dataclass(frozen=True)
class Offsets:
    """One read of the broker: high watermarks, and each group's committed offsets."""

    at: float
    highwaters: dict[TP, int]
    committed: dict[str, dict[TP, int]]


@dataclass(frozen=True)
class WatchedGroup:
    group_id: str
    topics: list[str]
    #: With no committed offset, an ``earliest`` group has the whole partition to read.
    from_start: bool


class OffsetReader:
    """Reads offsets of the namespace's topics and groups, as any Kafka tool does.

    Committed offsets by the admin client's OffsetFetch, high watermarks by ListOffsets.
    """

    def __init__(self, s: Settings) -> None:
        self.s = s
        self.admin = AIOKafkaAdminClient(**client_kwargs(s))
        self.consumer = AIOKafkaConsumer(**client_kwargs(s), group_id=None, enable_auto_commit=False)

    async def start(self) -> None:
        await self.admin.start()
        await self.consumer.start()

    async def stop(self) -> None:
        await self.consumer.stop()
        await self.admin.close()

    async def committed(self, group_id: str, tps: list[TopicPartition]) -> dict[TP, int]:
        if not tps:
            return {}
        found = await self.admin.list_consumer_group_offsets(group_id, partitions=tps)
        # -1: the group has committed nothing there.
        return {(tp.topic, tp.partition): meta.offset for tp, meta in found.items() if meta.offset >= 0}

    def groups(self, names: Iterable[str]) -> list[WatchedGroup]:
        s = self.s
        logic, task = topics.logic_group(s), topics.task_group(s)
        watched = [
            WatchedGroup(logic.group_id, [topics.upstream(s).name, topics.group(s).name, topics.user(s).name], True),
            WatchedGroup(task.group_id, [topics.task(s).name], True),
        ]
        prefix = topics.downstream_name(s, "")
        for name in sorted(names):
            if name.startswith(prefix):
                gateway_id = name[len(prefix):]
                watched.append(WatchedGroup(topics.gateway_group(s, gateway_id).group_id, [name], False))
        return watched

    async def read(self) -> tuple[Offsets, list[WatchedGroup]]:
        partitions = await topic_partitions(self.admin)
        names = [n for n in partitions if n.startswith(self.s.namespace)]
        watched = {*(spec.name for spec in topics.core(self.s)), *(n for n in names if "im-downstream-topic-" in n)}
        tps = [TopicPartition(n, p) for n in names if n in watched for p in partitions[n]]
        groups = self.groups(names)
        highwaters = await self._highwaters(tps)
        committed = {}
        for group in groups:
            mine = [tp for tp in tps if tp.topic in group.topics]
            committed[group.group_id] = await self.committed(group.group_id, mine)
        return Offsets(time.time(), {(tp.topic, tp.partition): hw for tp, hw in highwaters.items()}, committed), groups

    async def _highwaters(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        if not tps:
            return {}
        return await self.consumer.end_offsets(tps)


def lags(offsets: Offsets, groups: Iterable[WatchedGroup]) -> dict[tuple[str, str, int], int]:
    """(group, topic, partition) -> records not committed yet."""
    out = {}
    for group in groups:
        committed = offsets.committed.get(group.group_id, {})
        for (topic, partition), highwater in offsets.highwaters.items():
            if topic not in group.topics:
                continue
            start = committed.get((topic, partition))
            if start is None:
                start = 0 if group.from_start else highwater
            out[(group.group_id, topic, partition)] = max(0, highwater - start)
    return out


def latency_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus's histogram_quantile on cumulative ``(le, count)`` buckets, sorted by ``le``."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower_le, lower_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower_le
            inside = count - lower_count
            return lower_le + (le - lower_le) * ((rank - lower_count) / inside if inside else 1.0)
        lower_le, lower_count = le, count
    return lower_le


@dataclass
class Monitor:
    s: Settings
    reader: OffsetReader
    producer: AIOKafkaProducer
    observations: Observations
    alerting: Alerting
    #: (at, highwaters) of the recent reads, for rates.
    history: deque[tuple[float, dict[TP, int]]] = field(default_factory=deque)
    #: (at, summed latency buckets) of the recent scrapes.
    latency_history: deque[tuple[float, dict[float, float]]] = field(default_factory=deque)
    last_lags: dict[tuple[str, str, int], int] = field(default_factory=dict)
    #: (service, rule, labels) -> the latest event, from im-alert-topic.
    alert_events: dict[tuple[str, str, str], RuleAlert] = field(default_factory=dict)

    def label(self, topic: str) -> str:
        return topic.removeprefix(self.s.namespace)

    async def tick(self, http: aiohttp.ClientSession) -> None:
        offsets, groups = await self.reader.read()
        now = offsets.at
        self.last_lags = lags(offsets, groups)
        per_topic: dict[tuple[str, str], int] = {}
        for (group, topic, partition), lag in self.last_lags.items():
            consumer_lag.labels(self.label(group), self.label(topic), str(partition)).set(lag)
            per_topic[(self.label(group), self.label(topic))] = per_topic.get((self.label(group), self.label(topic)), 0) + lag
        for labels, lag in per_topic.items():
            self.observations.gauge(CONSUMER_LAG, labels, lag, now)
        records: dict[str, int] = {}
        for (topic, _), highwater in offsets.highwaters.items():
            records[topic] = records.get(topic, 0) + highwater
        for topic, count in records.items():
            topic_records.labels(self.label(topic)).set(count)
        s = self.s
        self.observations.counter(UPSTREAM_RECORDS, records.get(topics.upstream(s).name, 0), now)
        self.observations.counter(INPUT_RECORDS, sum(records.get(t.name, 0) for t in (topics.upstream(s), topics.task(s))),
                                  now)
        self.observations.counter(ERRORS, sum(records.get(t.name, 0) for t in (topics.upstream_dlq(s), topics.task_dlq(s))),
                                  now)
        await publish_rule_alerts(self.producer, self.s, "monitor", self.alerting.evaluate(self.observations, now))
        self._keep(self.history, (now, offsets.highwaters))
        if self.s.monitor_gateways:
            self._keep(self.latency_history, (now, await self._scrape_latency(http)))

    def _keep(self, history: deque, entry: tuple[float, Any]) -> None:
        history.append(entry)
        while len(history) > 2 and entry[0] - history[1][0] >= OVERVIEW_WINDOW_S:
            history.popleft()

    async def _scrape_latency(self, http: aiohttp.ClientSession) -> dict[float, float]:
        """The gateways' latency buckets, summed: le -> cumulative count."""
        summed: dict[float, float] = {}
        for base in self.s.monitor_gateways:
            try:
                async with http.get(f"{base.rstrip('/')}/metrics", headers=operator_headers(self.s),
                                    timeout=aiohttp.ClientTimeout(total=5)) as r:
                    r.raise_for_status()  # a 401 (another token) is logged, not parsed
                    text = await r.text()
            except (aiohttp.ClientError, TimeoutError) as exc:
                # Not repr(): a ClientResponseError's holds the request's headers, the token.
                log.warning("cannot scrape %s: %s %s", base, type(exc).__name__, exc)
                continue
            for family in text_string_to_metric_families(text):
                if family.name != _LATENCY_BUCKETS:
                    continue
                for sample in family.samples:
                    if sample.name.endswith("_bucket"):
                        le = float(sample.labels["le"])
                        summed[le] = summed.get(le, 0.0) + sample.value
        return summed

    async def tail_alerts(self) -> None:
        """Keep the latest event of every rule alert on im-alert-topic."""
        consumer = AIOKafkaConsumer(topics.alert(self.s).name, **client_kwargs(self.s), group_id=None,
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        try:
            async for record in consumer:
                try:
                    event = decode_alert(record.value or b"")
                except DecodeError as exc:
                    log.warning("unreadable alert event at %s@%s: %s", record.partition, record.offset, exc)
                    continue
                if isinstance(event, RuleAlert):
                    key = (event.service, event.rule, json.dumps(event.labels, sort_keys=True))
                    self.alert_events[key] = event
        finally:
            await consumer.stop()

    def overview(self) -> dict[str, Any]:
        throughput = []
        if len(self.history) >= 2:
            (first_at, first), (last_at, last) = self.history[0], self.history[-1]
            sums: dict[str, float] = {}
            for (topic, partition), hw in last.items():
                sums[topic] = sums.get(topic, 0) + hw - first.get((topic, partition), hw)
            throughput = [{"topic": self.label(t), "per_s": round(n / (last_at - first_at), 3)}
                          for t, n in sorted(sums.items())]
        upstream = self.label(topics.upstream(self.s).name)
        lag_rows = [{"group": self.label(g), "topic": self.label(t), "partition": p, "lag": lag}
                    for (g, t, p), lag in sorted(self.last_lags.items())]
        by_group: dict[str, int] = {}
        for row in lag_rows:
            by_group[row["group"]] = by_group.get(row["group"], 0) + row["lag"]
        last_hw = self.history[-1][1] if self.history else {}
        dead = [{"topic": self.label(spec.name), "count": sum(hw for (t, _), hw in last_hw.items() if t == spec.name)}
                for spec in (topics.upstream_dlq(self.s), topics.task_dlq(self.s))]
        alerts = [{"rule": e.rule, "labels": e.labels, "summary": e.summary, "since": e.at / 1000, "value": e.value,
                   "threshold": e.threshold, "service": e.service}
                  for e in self.alert_events.values() if e.state == "firing"]
        return {
            "generated_at": time.time(),
            "throughput": throughput,
            "upstream_per_s": next((row["per_s"] for row in throughput if row["topic"] == upstream), 0.0),
            "lag": lag_rows,
            "lag_by_group": by_group,
            "latency_ms": self._latency_ms(),
            "dead_letters": dead,
            "alerts": sorted(alerts, key=lambda a: a["since"]),
        }

    def _latency_ms(self) -> dict[str, float | None]:
        if len(self.latency_history) < 2:
            return {"p50": None, "p95": None, "p99": None, "count": 0}
        first, last = self.latency_history[0][1], self.latency_history[-1][1]
        buckets = sorted((le, count - first.get(le, 0.0)) for le, count in last.items())
        out: dict[str, float | None] = {}
        for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
            value = latency_quantile(buckets, q)
            out[name] = None if value is None else round(value * 1000, 1)
        out["count"] = buckets[-1][1] if buckets else 0
        return out


MONITOR = web.AppKey("monitor", Monitor)
#: Open to anyone: liveness, and the ops page's HTML (its data is /api/overview).
OPEN_PATHS = frozenset({"/healthz", "/"})


def create_app(s: Settings) -> web.Application:
    # /api/overview (counts, rates, lag) is what the ops page polls every 2 s, like /metrics.
    audit = AuditLog("monitor", buffer_max=s.audit_buffer_max)
    app = web.Application(middlewares=[operator_middleware(s, OPEN_PATHS, audit, {"/metrics", "/api/overview"})])
    app.cleanup_ctx.append(lambda app: _running(app, s, audit))
    app.router.add_get("/", _ops_page)
    app.router.add_get("/api/overview", _overview)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _health)
    return app


async def _running(app: web.Application, s: Settings, audit: AuditLog) -> AsyncIterator[None]:
    await topics.ensure_topics(s, topics.monitor_topics(s), audit)
    reader = OffsetReader(s)
    producer = AIOKafkaProducer(**producer_kwargs(s))
    await reader.start()
    await producer.start()
    audit.start(producer_send(producer, topics.audit(s).name))
    thresholds = s.alert_thresholds()
    monitor = Monitor(s, reader, producer, Observations(thresholds), Alerting(thresholds))
    app[MONITOR] = monitor
    tasks = [asyncio.create_task(_every_interval(monitor), name="monitor"),
             asyncio.create_task(monitor.tail_alerts(), name="alert-tail")]
    yield
    await cancel_all(tasks)
    await audit.close()
    await producer.stop()
    await reader.stop()


async def _every_interval(monitor: Monitor) -> None:
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                await monitor.tick(http)
            except Exception:  # a failed read must not end monitoring; the next one may work
                log.exception("monitor read failed")
            await asyncio.sleep(monitor.s.monitor_interval_s)


async def _ops_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(request.app[MONITOR].s.web_dir / "ops.html")


async def _overview(request: web.Request) -> web.Response:
    return web.json_response(request.app[MONITOR].overview())


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def run(s: Settings) -> None:
    """Serve until SIGINT or SIGTERM."""
    check_listen(s.monitor_host, s, "the monitor")
    await serve(create_app(s), s, s.monitor_host, s.monitor_port, "monitor")
