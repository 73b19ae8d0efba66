"""Metrics, the in-app alert rules under faults made for them, and the ops page in a real browser."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer
from prometheus_client.parser import text_string_to_metric_families

from gochat_streams import topics
from gochat_streams.codecs import decode_alert
from gochat_streams.kafka import client_kwargs
from gochat_streams.models import RuleAlert

from gochat_streams.devstack import free_port

from .. import browser
from .conftest import OPERATOR_TOKEN, WAIT_S, Client, Cluster, consume_all, produce

pytestmark = pytest.mark.integration

#: Kept after the run (gitignored): what the browser showed.
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
#: What a client of operator endpoints sends where GOCHAT_OPERATOR_TOKEN is set.
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


async def _samples(http: aiohttp.ClientSession, url: str) -> dict[tuple[str, frozenset], float]:
    async with http.get(url, headers=OPERATOR) as response:
        text = await response.text()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def _until(check: Any, timeout: float = WAIT_S) -> Any:
    """Poll ``check()`` (async) until it returns something truthy."""
    async with asyncio.timeout(timeout):
        while not (result := await check()):
            await asyncio.sleep(0.5)
        return result


async def _send(alice: Client, to: str, ids: list[str]) -> None:
    for message_id in ids:
        await alice.send(message_id, to)
    assert [await alice.next_frame() for _ in ids] == [{"type": "ack", "message_id": i} for i in ids]


async def test_metrics_count_each_message_and_the_ops_page_shows_the_traffic(cluster: Cluster, connect: Any) -> None:
    # With the operator token: the monitor scrapes the gateways' /metrics with it.
    cluster.env.update({"GOCHAT_MONITOR_INTERVAL_S": "0.5", "GOCHAT_OPERATOR_TOKEN": OPERATOR_TOKEN})
    cluster.start_worker("w1")
    gw = cluster.start_gateway("gw1")
    monitor = cluster.start_monitor([gw])
    alice, bob = await connect(gw, "alice"), await connect(gw, "bob")
    ids = [f"m{i}" for i in range(50)]
    await _send(alice, "bob", ids)
    assert [m["message_id"] for m in await bob.messages(len(ids), ack=True)] == ids

    worker = f"http://127.0.0.1:{cluster.web_ports['w1']}/metrics"
    async with aiohttp.ClientSession() as http:
        # The gateway pushed 50 and measured 50 latencies.
        gateway = await _samples(http, f"{gw}/metrics")
        assert _value(gateway, "gochat_e2e_latency_seconds_count", gateway="gw1") == 50
        assert _value(gateway, "gochat_messages_consumed_total", service="gateway",
                      topic="im-downstream-topic-gw1") == 50
        assert _value(gateway, "gochat_gateway_connections", gateway="gw1") == 2

        # The worker took 50 messages upstream; on im-user-topic 2 connects, 50 deliveries, and
        # bob's 50 acks, in as many records as the gateway made of them (gateway/acks.py).
        s = cluster.settings
        user_records = await consume_all(s, [topics.user(s).name], lambda records: sum(
            len(json.loads(r.value).get("entries", ())) for r in records) >= 50)
        assert 52 < len(user_records) <= 102

        async def settled() -> dict | None:
            got = await _samples(http, worker)
            user = _value(got, "gochat_messages_consumed_total", service="logic", topic="im-user-topic")
            return got if user == len(user_records) else None

        got = await _until(settled)
        assert _value(got, "gochat_messages_consumed_total", service="logic", topic="im-upstream-topic") == 50
        assert _value(got, "gochat_messages_routed_total", path="online") == 50
        assert _value(got, "gochat_processing_errors_total", service="logic", kind="malformed_json") == 0

        # The monitor sees the logic group catch up: lag back to 0 on every partition.
        async def caught_up() -> bool:
            lags = {dict(labels)["partition"]: value for (name, labels), value in (await _samples(
                http, f"{monitor}/metrics")).items()
                if name == "gochat_consumer_lag" and dict(labels)["group"] == "im-logic-group"
                and dict(labels)["topic"] == "im-upstream-topic"}
            return len(lags) == topics.upstream(cluster.settings).partitions and not any(lags.values())

        await _until(caught_up)

    # The ops page, in headless chromium, while the traffic is inside its window; the
    # token in the fragment, which the browser does not send (ops.html).
    await _send(alice, "bob", [f"n{i}" for i in range(20)])
    ARTIFACTS.mkdir(exist_ok=True)
    page = f"{monitor}/#token={OPERATOR_TOKEN}"
    dom = await asyncio.to_thread(browser.rendered_dom, page, wait_ms=4000)
    await asyncio.to_thread(browser.screenshot, page, ARTIFACTS / "ops-page.png", wait_ms=4000)
    values = browser.test_values(dom)
    assert float(values["upstream-rate"]) > 0
    assert float(values["latency-count"]) > 0 and float(values["latency-p99"]) > 0
    assert float(values["dlq-im-upstream-dlq"]) == 0
    assert len(browser.rows(dom, "lag-row")) >= topics.upstream(cluster.settings).partitions
    assert (ARTIFACTS / "ops-page.png").stat().st_size > 10_000


async def test_the_monitor_wants_the_operator_token_and_its_page_asks_for_it(cluster: Cluster) -> None:
    # Beyond loopback without a token, it refuses to start.
    with pytest.raises(RuntimeError, match="exited"):
        cluster.stack.start_monitor("open", {**cluster.env, "GOCHAT_MONITOR_HOST": "0.0.0.0"}, free_port(),
                                    timeout=WAIT_S)
    assert "set GOCHAT_OPERATOR_TOKEN" in (cluster.stack.log_dir / "open.log").read_text()

    # A gateway with another token: the monitor's scrapes of it are refused.
    cluster.env.update({"GOCHAT_MONITOR_INTERVAL_S": "0.5", "GOCHAT_OPERATOR_TOKEN": OPERATOR_TOKEN[::-1]})
    gw = cluster.start_gateway("gw1")
    cluster.env["GOCHAT_OPERATOR_TOKEN"] = OPERATOR_TOKEN
    monitor = cluster.start_monitor([gw])
    async with aiohttp.ClientSession() as http:
        for path in ("/api/overview", "/metrics"):
            for headers in ({}, {"Authorization": f"Bearer {OPERATOR_TOKEN}x"}, {"Authorization": OPERATOR_TOKEN}):
                async with http.get(monitor + path, headers=headers) as response:
                    assert response.status == 401, (path, headers)
            async with http.get(monitor + path, headers=OPERATOR) as response:
                assert response.status == 200, path
        # Liveness, and the page without its data: open.
        for path in ("/healthz", "/"):
            async with http.get(monitor + path) as response:
                assert response.status == 200, path

    # The page without the token asks for it; with it, it shows the data.
    values = browser.test_values(await asyncio.to_thread(browser.rendered_dom, monitor + "/", wait_ms=3000))
    assert (values["status"], values["token-form"]) == ("error", "required")
    values = browser.test_values(await asyncio.to_thread(browser.rendered_dom, f"{monitor}/#token={OPERATOR_TOKEN}",
                                                         wait_ms=3000))
    assert (values["status"], values["token-form"]) == ("ok", "")
    # A refused scrape is a warning, not a failed read.
    cluster.wait_for_log("monitor", "401, message='Unauthorized'")
    assert "monitor read failed" not in (cluster.stack.log_dir / "monitor.log").read_text()
    for log in cluster.stack.log_dir.glob("*.log"):
        text = log.read_text(errors="replace")
        assert OPERATOR_TOKEN not in text and OPERATOR_TOKEN[::-1] not in text, log.name


async def test_each_alert_rule_fires_under_its_fault_and_resolves(cluster: Cluster, connect: Any) -> None:
    cluster.env.update({
        "GOCHAT_MONITOR_INTERVAL_S": "0.5",
        "GOCHAT_ALERT_LAG_THRESHOLD": "20", "GOCHAT_ALERT_LAG_FOR_S": "2",
        "GOCHAT_ALERT_QPS_WINDOW_S": "2", "GOCHAT_ALERT_QPS_BASELINE_OFFSET_S": "4", "GOCHAT_ALERT_QPS_FOR_S": "1",
        "GOCHAT_ALERT_LATENCY_THRESHOLD_S": "1.5", "GOCHAT_ALERT_LATENCY_WINDOW_S": "3",
        "GOCHAT_ALERT_ERROR_WINDOW_S": "3", "GOCHAT_ALERT_ERROR_FOR_S": "1",
        "GOCHAT_MAX_FRAMES_PER_S": "1000", "GOCHAT_MAX_FRAMES_BURST": "1000",
    })
    cluster.start_worker("w1")
    gw = cluster.start_gateway("gw1")
    cluster.start_monitor([gw])
    s = cluster.settings
    alice, bob = await connect(gw, "alice"), await connect(gw, "bob")
    seen: list[RuleAlert] = []
    reader = asyncio.create_task(_read_alerts(s, seen))

    async def alerts(rule: str, state: str) -> list[RuleAlert]:
        return [e for e in seen if e.rule == rule and e.state == state]

    async def fired_and_resolved(rule: str, after_ms: int) -> RuleAlert:
        firing = await _until(lambda: _newer(alerts(rule, "firing"), after_ms))
        await _until(lambda: _newer(alerts(rule, "resolved"), firing.at))
        return firing

    # Throughput: steady traffic, then none.
    start = int(time.time() * 1000)
    for i in range(16):
        await _send(alice, "bob", [f"steady{i}-{j}" for j in range(5)])
        await asyncio.sleep(0.5)
    await bob.messages(80)
    drop = await fired_and_resolved("throughput_drop", start)
    assert drop.service == "monitor" and drop.value < 0.5

    # Error rate: bad records among good ones on the upstream topic.
    start = int(time.time() * 1000)
    await produce(s, topics.upstream(s).name, [("alice", b"{not json")] * 10)
    await _send(alice, "bob", [f"good{i}" for i in range(10)])
    await bob.messages(10)
    errors = await fired_and_resolved("error_rate", start)
    assert errors.service == "monitor" and errors.value > 0.01

    # Latency: the logic worker frozen for 3 s while messages wait.
    start = int(time.time() * 1000)
    worker = cluster.workers["w1"]
    os.killpg(worker.pid, signal.SIGSTOP)
    try:
        await _send(alice, "bob", [f"slow{i}" for i in range(5)])
        await asyncio.sleep(3)
    finally:
        os.killpg(worker.pid, signal.SIGCONT)
    await bob.messages(5)
    slow = await fired_and_resolved("e2e_latency", start)
    assert (slow.service, slow.labels) == ("gateway", {"gateway": "gw1"}) and slow.value > 1.5

    # Lag: the logic worker stopped while 30 messages arrive, then started again.
    start = int(time.time() * 1000)
    cluster.stop_worker("w1")
    await _send(alice, "bob", [f"lagged{i}" for i in range(30)])
    firing = await _until(lambda: _newer(alerts("consumer_lag", "firing"), start))
    assert firing.labels == {"group": "im-logic-group", "topic": "im-upstream-topic"} and firing.value >= 30
    cluster.start_worker("w1")
    await bob.messages(30)
    await _until(lambda: _newer(alerts("consumer_lag", "resolved"), firing.at))

    reader.cancel()
    # Once per firing, once per resolve: for each rule and labels, states alternate.
    for key in {(e.rule, tuple(sorted(e.labels.items()))) for e in seen}:
        states = [e.state for e in seen if (e.rule, tuple(sorted(e.labels.items()))) == key]
        assert states[0] == "firing" and all(a != b for a, b in zip(states, states[1:])), (key, states)
    log = (cluster.stack.log_dir / "monitor.log").read_text()
    assert "ALERT firing consumer_lag" in log and "ALERT resolved consumer_lag" in log


async def _read_alerts(s: Any, seen: list[RuleAlert]) -> None:
    """Append every rule alert on im-alert-topic to ``seen``, as it comes."""
    consumer = AIOKafkaConsumer(topics.alert(s).name, **client_kwargs(s), group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        async for record in consumer:
            if isinstance(event := decode_alert(record.value), RuleAlert):
                seen.append(event)
    finally:
        await consumer.stop()


async def _newer(pending: Any, after_ms: int) -> RuleAlert | None:
    """The first of the awaited alerts at or after ``after_ms``."""
    return next((e for e in await pending if e.at >= after_ms), None)


async def test_grep_of_a_message_id_shows_its_whole_path(cluster: Cluster, connect: Any) -> None:
    cluster.env["GOCHAT_LOG_FORMAT"] = "json"
    cluster.env["GOCHAT_TRACE_SAMPLE_RATE"] = "1"
    cluster.start_worker("w1")
    cluster.start_task_worker()
    gw = cluster.start_gateway("gw1")
    alice, bob = await connect(gw, "alice"), await connect(gw, "bob")
    await _send(alice, "bob", ["traced-1"])
    assert [m["message_id"] for m in await bob.messages(1)] == ["traced-1"]

    async def hops() -> list[dict] | None:
        lines = [json.loads(line) for log in cluster.stack.log_dir.glob("*.log")
                 for line in log.read_text().splitlines() if "traced-1" in line]
        found = [line for line in lines if "trace" in line]
        return found if {"gateway_in", "logic", "deliver", "task", "gateway_out"} <= {
            line["trace"]["trace"] for line in found} else None

    found = await _until(hops)
    assert sorted(line["trace"]["trace"] for line in found) == ["deliver", "gateway_in", "gateway_out", "logic", "task"]
    # The path is in the records each hop names, not in the order of two processes' lines:
    # gateway_in is logged once the broker has the record, which the logic service may
    # already have read. deliver is logged before its record is produced.
    s = cluster.settings
    by_hop = {line["trace"]["trace"]: line["trace"] for line in found}
    logged_at = {line["trace"]["trace"]: line["time"] for line in found}
    assert logged_at["deliver"] <= logged_at["gateway_out"]
    assert by_hop["gateway_in"]["topic"] == by_hop["logic"]["topic"] == topics.upstream(s).name
    assert by_hop["gateway_in"]["offset"] == by_hop["logic"]["offset"]
    assert by_hop["deliver"]["topic"] == topics.user(s).name
    assert by_hop["task"]["topic"] == topics.task(s).name and by_hop["task"]["task_type"] == "persist_message"
    assert by_hop["gateway_out"]["topic"] == topics.downstream_name(s, "gw1") and by_hop["gateway_out"]["kind"] == "live"
    assert all(isinstance(by_hop[h]["elapsed_ms"], float) for h in ("gateway_in", "logic", "deliver", "task"))
