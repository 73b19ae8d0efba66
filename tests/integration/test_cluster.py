"""The 3-node Kafka cluster: the spec's topic configs as the brokers hold them, and broker failover under load.

One cluster serves the module (``kafka3``); each test has its own namespace and leaves
every node running.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from typing import Any

import pytest
from aiokafka import AIOKafkaClient, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from gochat_streams import topics
from gochat_streams.devstack import KafkaCluster
from gochat_streams.kafka import client_kwargs, served_topics
from gochat_streams.settings import DAY_MS

from .conftest import WAIT_S, Client, Cluster

pytestmark = pytest.mark.integration

#: The broker's own topics, created with its settings: offsets on the first group, transactions
#: on the first transactional producer.
OFFSETS_TOPIC = "__consumer_offsets"
TRANSACTIONS_TOPIC = "__transaction_state"


async def test_every_topic_has_the_spec_configs_on_the_brokers(cluster3: Cluster) -> None:
    cluster3.start_worker("w1")
    cluster3.start_task_worker()
    cluster3.start_gateway("gw1")
    s = cluster3.settings
    await _create_transaction_topic(cluster3)
    logic_id = topics.logic_group(s).group_id
    # (partitions, replicas, configs) as the spec's table and topics.py say.
    expected: dict[str, tuple[int | None, int, dict[str, str]]] = {
        spec.name: (spec.partitions, spec.replicas, {
            "retention.ms": str(spec.retention_ms), "compression.type": "lz4",
            "min.insync.replicas": "2" if spec.replicas == 3 else "1", "cleanup.policy": "delete",
        }) for spec in [*topics.core(s), topics.downstream(s, "gw1")]
    }
    # Faust's changelogs: compacted, partitioned like the topic whose records write them.
    for table, partitions in [("presence", 10), ("inbox", 10), ("groups", 10)]:
        expected[f"{logic_id}-{table}-changelog"] = (
            partitions, 3, {"compression.type": "lz4", "min.insync.replicas": "2", "cleanup.policy": "compact"})
    assert {name: value[:2] for name, value in expected.items()} == {
        f"{s.namespace}im-upstream-topic": (10, 3), f"{s.namespace}im-group-topic": (10, 3),
        f"{s.namespace}im-user-topic": (10, 3), f"{s.namespace}im-task-topic": (5, 3),
        f"{s.namespace}im-upstream-dlq": (3, 3), f"{s.namespace}im-task-dlq": (3, 3),
        f"{s.namespace}im-alert-topic": (1, 3), f"{s.namespace}im-downstream-topic-gw1": (3, 2),
        f"{s.namespace}im-audit-topic": (3, 3),
        f"{logic_id}-presence-changelog": (10, 3), f"{logic_id}-inbox-changelog": (10, 3),
        f"{logic_id}-groups-changelog": (10, 3),
    }
    assert [expected[f"{s.namespace}{name}"][2]["retention.ms"] for name in
            ("im-upstream-topic", "im-downstream-topic-gw1", "im-task-topic", "im-audit-topic")] == [
        str(7 * DAY_MS), str(1 * DAY_MS), str(3 * DAY_MS), str(365 * DAY_MS)]
    for broker_topic in (OFFSETS_TOPIC, TRANSACTIONS_TOPIC):
        # Partitions: the broker's own settings.
        expected[broker_topic] = (None, 3, {"min.insync.replicas": "2", "cleanup.policy": "compact"})

    admin = AIOKafkaAdminClient(**client_kwargs(s))
    await admin.start()
    try:
        names = set(await admin.list_topics())
        # Every topic of the namespace is one the spec's table (or a table) names: none missed.
        ours = {n for n in names if n.startswith(s.namespace)}
        assert ours | ({OFFSETS_TOPIC, TRANSACTIONS_TOPIC} & names) == set(expected)
        described = {t["topic"]: t for t in await admin.describe_topics(sorted(expected))}
        layout = {name: (len(t["partitions"]), {len(p["replicas"]) for p in t["partitions"]})
                  for name, t in described.items()}
        assert {name: (partitions or layout[name][0], {replicas})
                for name, (partitions, replicas, _) in expected.items()} == layout
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name, {key: None for key in configs})
             for name, (_, _, configs) in expected.items()])
    finally:
        await admin.close()
    found = {resource["resource_name"]: {entry["config_names"]: entry["config_value"]
                                         for entry in resource["config_entries"]}
             for response in responses for resource in response.to_object()["resources"]}
    assert found == {name: configs for name, (_, _, configs) in expected.items()}


async def _create_transaction_topic(cluster: Cluster) -> None:
    """The broker creates its transaction topic for the first transactional producer (exactly-once)."""
    producer = AIOKafkaProducer(**client_kwargs(cluster.settings),
                                transactional_id=f"{cluster.settings.namespace}probe")
    await producer.start()
    await producer.stop()


async def test_a_new_topic_is_in_every_brokers_metadata_once_created(cluster3: Cluster) -> None:
    """A consumer group's leader assigns only the partitions its broker's metadata has; Kafka
    applies a new topic to each broker's metadata after CreateTopics has answered."""
    s = cluster3.settings
    client = AIOKafkaClient(**client_kwargs(s))
    await client.bootstrap()
    missing = []
    try:
        for i in range(20):
            spec = topics.downstream(s, f"new{i}")
            await topics.ensure_topics(s, [spec])
            for broker in client.cluster.brokers():
                served = await served_topics(client, broker.nodeId, [spec.name])
                if served.get(spec.name) != spec.partitions:
                    missing.append((spec.name, broker.nodeId, served))
    finally:
        await client.close()
    assert missing == []


# --- broker failover -----------------------------------------------------------------------

SENDERS = 10
PER_SENDER = 300
RECIPIENTS = 5
#: Messages received before the broker goes: mid-stream.
FAIL_AFTER = 600
#: Messages received after it went, before it comes back: the flow went on without it.
RESTART_AFTER = 600


@pytest.mark.timeout(600)
@pytest.mark.parametrize("how", ["kill", "stop"])
async def test_the_busiest_broker_going_loses_and_doubles_nothing(
        cluster3: Cluster, kafka3: KafkaCluster, connect: Any, how: str) -> None:
    """kill -9 (or SIGTERM: a controlled shutdown) of the broker leading most partitions
    of im-upstream-topic and im-user-topic mid-stream, then its restart: every acked
    message reaches its recipient once, in its sender's order, and no process of ours
    is restarted."""
    # As in test_crash.py: neither flood limits nor heartbeats are what this is about.
    cluster3.env.update({"GOCHAT_MAX_FRAMES_PER_S": "100000", "GOCHAT_MAX_FRAMES_BURST": "100000",
                         "GOCHAT_WS_HEARTBEAT_S": "600"})
    cluster3.start_worker("w1")
    cluster3.start_worker("w2")
    gateways = [cluster3.start_gateway("gw1"), cluster3.start_gateway("gw2")]
    senders = [await connect(gateways[i % 2], f"sender{i}") for i in range(SENDERS)]
    # Each recipient gets the messages of two senders, one on each gateway.
    recipients = [await connect(gateways[(i + 1) % 2], f"rcpt{i}") for i in range(RECIPIENTS)]
    s = cluster3.settings
    node = await _busiest_leader(cluster3, [topics.upstream(s).name, topics.user(s).name])

    flow = _Flow(senders, recipients)
    failed_at, restarted_at = 0.0, 0.0

    async def fail_and_restart() -> None:
        nonlocal failed_at, restarted_at
        await flow.arrived(FAIL_AFTER)
        failed_at = time.monotonic()
        await asyncio.to_thread(kafka3.kill_node if how == "kill" else kafka3.stop_node, node)
        await flow.arrived(FAIL_AFTER + RESTART_AFTER)
        await asyncio.to_thread(kafka3.start_node, node)
        restarted_at = time.monotonic()

    try:
        await asyncio.gather(flow.run(), fail_and_restart())
    finally:
        await asyncio.to_thread(_all_running, kafka3)

    # The stall: the longest time without a message arriving, reported (not asserted).
    print(f"\nbroker {node} {how}: {flow.received_count} messages received, {len(flow.acked)} acked, "
          f"{flow.refused} refused; a sender's longest wait after the {how}: "
          f"{flow.longest_gap(failed_at, restarted_at):.2f} s, after the restart: "
          f"{flow.longest_gap(restarted_at, time.monotonic()):.2f} s; the flow took {flow.duration:.1f} s")
    assert flow.differences() == {}
    assert len(flow.acked) >= FAIL_AFTER + RESTART_AFTER
    # Nothing of ours was restarted, by hand or otherwise: every process still runs.
    assert [name for name, proc in {**cluster3.workers, **cluster3.gateways}.items() if proc.poll() is not None] == []


async def test_two_brokers_down_refuses_senders_and_resumes_when_one_returns(
        cluster3: Cluster, kafka3: KafkaCluster, connect: Any) -> None:
    """Below min.insync.replicas (and, with 3 combined nodes, the controller quorum): a sender
    gets ``broker_unavailable``, nothing acked before is lost, and messages flow again
    once a second broker is back."""
    # bob reads only at the end: the gateway's heartbeat must not close his socket before.
    cluster3.env.update({"GOCHAT_SEND_TIMEOUT_S": "3", "GOCHAT_WS_HEARTBEAT_S": "600"})
    cluster3.start_worker("w1")
    cluster3.start_worker("w2")
    gw1, gw2 = cluster3.start_gateway("gw1"), cluster3.start_gateway("gw2")
    alice, bob = await connect(gw1, "alice"), await connect(gw2, "bob")
    before = [f"before-{n}" for n in range(100)]
    for message_id in before:
        await alice.send(message_id, "bob")
    assert [await alice.next_frame() for _ in before] == [{"type": "ack", "message_id": m} for m in before]
    got = [m["message_id"] for m in await bob.messages(len(before), ack=True)]
    assert got == before

    down = sorted(kafka3.nodes)[1:]  # the first survives
    try:
        for node in down:
            await asyncio.to_thread(kafka3.kill_node, node)
        during = [f"during-{n}" for n in range(3)]
        for message_id in during:
            await alice.send(message_id, "bob")
        frames = [await alice.next_frame(timeout=WAIT_S) for _ in during]
        assert [(f["type"], f["code"], f["message_id"]) for f in frames] == [
            ("error", "broker_unavailable", m) for m in during]

        restarting = time.monotonic()
        await asyncio.to_thread(kafka3.start_node, down[0])
        started = time.monotonic()
        after = [f"after-{n}" for n in range(50)]
        refused = await _send_until_acked(alice, after[0], "bob")
        resumed = time.monotonic()
        for message_id in after[1:]:
            refused += await _send_until_acked(alice, message_id, "bob")
    finally:
        await asyncio.to_thread(_all_running, kafka3)
    # What was refused may have reached the broker after all (the producer had it); then once and in order.
    got = [m["message_id"] for m in await _messages_until(bob, after[-1])]
    assert Counter(got).most_common(1)[0][1] == 1
    assert [m for m in got if not m.startswith("during-")] == after
    assert got == [m for m in [*during, *after] if m in got]
    print(f"\nnodes {down} killed, {down[0]} restarted: it served {started - restarting:.1f} s after its start, "
          f"the first message was acked {resumed - started:.1f} s later ({refused} refusals on the way); "
          f"{sum(m.startswith('during-') for m in got)} of {len(during)} refused messages arrived after all")
    assert [name for name, proc in {**cluster3.workers, **cluster3.gateways}.items() if proc.poll() is not None] == []


async def _send_until_acked(client: Client, message_id: str, to: str) -> int:
    """Send, and send again after each ``broker_unavailable`` (a client's retry), until acked;
    how many times it was refused."""
    refused = 0
    async with asyncio.timeout(2 * WAIT_S):
        while True:
            await client.send(message_id, to)
            frame = await client.next_frame()
            if frame == {"type": "ack", "message_id": message_id}:
                return refused
            refused += 1
            assert (frame["type"], frame["code"], frame["message_id"]) == ("error", "broker_unavailable", message_id)
            await asyncio.sleep(1)


async def _messages_until(client: Client, last_id: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while not out or out[-1]["message_id"] != last_id:
        out.extend(await client.messages(1, ack=True))
    return out


async def _busiest_leader(cluster: Cluster, names: list[str]) -> int:
    """The node id leading most partitions of ``names``, from the brokers' metadata."""
    admin = AIOKafkaAdminClient(**client_kwargs(cluster.settings))
    await admin.start()
    try:
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    leaders = Counter(p["leader"] for t in described for p in t["partitions"])
    return leaders.most_common(1)[0][0]


def _all_running(kafka3: KafkaCluster) -> None:
    """Bring back any node a test took down, so that the next test has three."""
    for node_id, node in kafka3.nodes.items():
        if not node.running:
            kafka3.start_node(node_id)


class _Flow:
    """Senders to recipients through the gateways: what was acked, refused, received, and when."""

    def __init__(self, senders: list[Client], recipients: list[Client]) -> None:
        self.senders, self.recipients = senders, recipients
        self.to = {s.user_id: recipients[i % len(recipients)].user_id for i, s in enumerate(senders)}
        self.acked: set[str] = set()
        self.refused = 0
        self.received: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        #: Arrival times: of every message, and per (recipient, sender) stream.
        self.times: list[float] = []
        self.stream_times: dict[tuple[str, str], list[float]] = defaultdict(list)
        self._waiters: list[tuple[int, asyncio.Event]] = []
        self._sent = asyncio.Event()
        self.started = 0.0

    @property
    def duration(self) -> float:
        return self.times[-1] - self.started if self.times else 0.0

    @property
    def received_count(self) -> int:
        return len(self.times)

    async def arrived(self, count: int) -> None:
        """Back once ``count`` messages have arrived, or the flow is over."""
        if self.received_count < count:
            event = asyncio.Event()
            self._waiters.append((count, event))
            await event.wait()

    async def run(self) -> None:
        self.started = time.monotonic()
        try:
            await asyncio.gather(self._send_all(), *(self._receive(r) for r in self.recipients))
        finally:
            for _, event in self._waiters:
                event.set()

    async def _send_all(self) -> None:
        await asyncio.gather(*(self._send(s) for s in self.senders))
        self._sent.set()

    async def _send(self, client: Client) -> None:
        ids = [f"{client.user_id}-{n}" for n in range(PER_SENDER)]
        for message_id in ids:
            await client.send(message_id, self.to[client.user_id], content=message_id)
            await asyncio.sleep(0.01)  # a steady flow, not one burst: the broker goes while it runs
        for message_id in ids:
            frame = await client.next_frame(timeout=2 * WAIT_S)
            assert frame["message_id"] == message_id, frame
            if frame["type"] == "ack":
                self.acked.add(message_id)
            else:
                assert frame["code"] == "broker_unavailable", frame
                self.refused += 1

    async def _receive(self, client: Client) -> None:
        """Every frame until all acked messages are in and 3 s pass quietly."""
        quiet_s, last_progress = 0.0, time.monotonic()
        while quiet_s < 3.0:
            try:
                frame = await client.next_frame(timeout=0.5)
            except TimeoutError:
                if self._sent.is_set() and self._all_acked_arrived():
                    quiet_s += 0.5
                assert time.monotonic() - last_progress < 2 * WAIT_S, (
                    f"{client.user_id} stalled; received per recipient and sender: "
                    f"{ {r: {s: len(ids) for s, ids in by.items()} for r, by in self.received.items()} }")
                continue
            assert frame["type"] == "message", frame
            message = frame["message"]
            self.received[client.user_id][message["from_user_id"]].append(message["message_id"])
            await client.ack(message["message_id"])
            self.times.append(last_progress := time.monotonic())
            self.stream_times[client.user_id, message["from_user_id"]].append(last_progress)
            quiet_s = 0.0
            for count, event in self._waiters:
                if self.received_count >= count:
                    event.set()

    def _all_acked_arrived(self) -> bool:
        arrived = {m for by_sender in self.received.values() for ids in by_sender.values() for m in ids}
        return self.acked <= arrived

    def longest_gap(self, start: float, end: float) -> float:
        """The longest time between ``start`` and ``end`` that some sender's stream went without a
        message (while it still had messages to come)."""
        gaps = [0.0]
        for arrivals in self.stream_times.values():
            times = [start, *(t for t in arrivals if start < t < end)]
            gaps.extend(b - a for a, b in zip(times, times[1:], strict=False))
        return max(gaps)

    def differences(self) -> dict[str, Any]:
        """Per recipient and sender: copies, acked messages missing, whether out of the sender's order."""
        out: dict[str, Any] = {}
        for sender, recipient in self.to.items():
            seen = self.received[recipient][sender]
            ids = [f"{sender}-{n}" for n in range(PER_SENDER)]
            copies = len(seen) - len(set(seen))
            missing = len({m for m in ids if m in self.acked} - set(seen))
            in_order = seen == [m for m in ids if m in set(seen)]
            if copies or missing or not in_order:
                out[f"{recipient}<-{sender}"] = {"copies": copies, "missing": missing, "in_order": in_order}
        return out
