"""The broker secured (spec 认证授权, ACL 控制, 传输加密): SASL_SSL only, one principal per service, ACLs.

A Kafka node of this module's own, started by the launcher in its secured mode
(devstack.BrokerSecurity: a throwaway CA's certificate, SCRAM and PLAIN accounts, the
StandardAuthorizer with ``admin`` the only super user). Each test's topics are created by
the admin and its ACLs applied with ``acls apply``; every process logs in as its own
principal with SCRAM-SHA-512.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import GroupAuthorizationFailedError, KafkaConnectionError, TopicAuthorizationFailedError
from aiokafka.helpers import create_ssl_context

from gochat_streams import acls, topics
from gochat_streams.audit import read_records
from gochat_streams.devstack import BrokerSecurity, KafkaCluster, Stack, free_port
from gochat_streams.kafka import BrokerRefused, client_kwargs
from gochat_streams.settings import Settings

from ..tls import broker_security, server_certificate
from .conftest import WAIT_S, Client, Cluster

pytestmark = pytest.mark.integration

GATEWAYS = ("gw1", "gw2")


@pytest.fixture(scope="module")
def secured_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KafkaCluster, BrokerSecurity]]:
    root = tmp_path_factory.mktemp("secured-kafka")
    security = broker_security(root / "tls")
    stack = Stack(root / "logs")
    try:
        yield stack.start_kafka(1, security=security), security
    finally:
        stack.stop()


def _command(cluster: Cluster, *args: str, user: str = "admin") -> subprocess.CompletedProcess[str]:
    """``python -m gochat_streams ARGS`` as ``user``."""
    env = {**cluster.env, **cluster.credentials(user)}
    return subprocess.run([sys.executable, "-m", "gochat_streams", *args], env={**_os_env(), **env},
                          capture_output=True, text=True, timeout=120)


def _os_env() -> dict[str, str]:
    import os

    return dict(os.environ)


@pytest.fixture
def secured(cluster: Cluster, secured_kafka: tuple[KafkaCluster, BrokerSecurity]) -> Cluster:
    """The test's processes on the secured broker, each as its own principal; the test's topics
    created and its ACLs applied by the admin. ``cluster.settings`` has no account: names only."""
    return _secure(cluster, *secured_kafka)


def _secure(cluster: Cluster, kafka: KafkaCluster, security: BrokerSecurity) -> Cluster:
    # No account in the shared env: each process, command and client gets its own (credentials).
    cluster.env["GOCHAT_BROKER_URL"] = kafka.url

    def credentials(user: str) -> dict[str, str]:
        env = security.env(user)
        if user == "task":  # this one reads its password from a file
            path = cluster.root / "task-broker-password"
            path.write_text(env.pop("GOCHAT_BROKER_SASL_PASSWORD") + "\n")
            env["GOCHAT_BROKER_SASL_PASSWORD_FILE"] = str(path)
        return env

    cluster.credentials = credentials
    created = _command(cluster, "create-topics", *(arg for g in GATEWAYS for arg in ("--gateway", g)))
    assert created.returncode == 0, created.stderr
    applied = _command(cluster, "acls", "apply", *(arg for g in GATEWAYS for arg in ("--gateway", g)))
    assert applied.returncode == 0, applied.stderr
    assert "ACLs created, 0 already there" in applied.stdout
    return cluster


def _as(cluster: Cluster, user: str, **overrides: str) -> Settings:
    env = {**cluster.env, **cluster.credentials(user), **overrides}
    return Settings(**{k[len("GOCHAT_"):].lower(): v for k, v in env.items()})


async def _single_chat(connect: Any, gw1: str, gw2: str) -> tuple[Client, Client]:
    """alice on ``gw1`` sends bob on ``gw2`` a message: acked, delivered; (alice, bob)."""
    alice, bob = await connect(gw1, "alice"), await connect(gw2, "bob")
    await alice.send("m1", "bob", content="hi bob")
    assert await alice.next_frame() == {"type": "ack", "message_id": "m1"}
    [message] = await bob.messages(1, ack=True)
    assert (message["message_id"], message["from_user_id"], message["content"]) == ("m1", "alice", "hi bob")
    return alice, bob


async def test_the_chat_path_works_with_sasl_ssl_and_each_service_on_its_own_principal(
    secured: Cluster, secured_kafka: tuple[KafkaCluster, BrokerSecurity], connect: Any
) -> None:
    cluster, security = secured, secured_kafka[1]
    cluster.start_worker()
    cluster.start_task_worker()
    gw1, gw2 = cluster.start_gateway("gw1"), cluster.start_gateway("gw2")

    alice, bob = await _single_chat(connect, gw1, gw2)

    # A group with an offline member: created, a message reaches the members online, the
    # task service pushes to carol, and carol's connect syncs both.
    await alice.group_action("create-g1", "g1", "create", member_ids=["bob", "carol"])
    assert await alice.next_frame() == {"type": "ack", "message_id": "create-g1"}
    [created] = await bob.messages(1, ack=True)
    assert created["message_id"] == "create-g1"
    await alice.send_to_group("hello-g1", "g1", "hello, group")
    assert await alice.next_frame() == {"type": "ack", "message_id": "hello-g1"}
    [hello] = await bob.messages(1, ack=True)
    assert (hello["message_id"], hello["from_user_id"], hello["content"]) == ("hello-g1", "alice", "hello, group")
    async with asyncio.timeout(WAIT_S):
        while not [p for p in cluster.pushes() if p["message_id"] == "hello-g1" and p["user_id"] == "carol"]:
            await asyncio.sleep(0.2)
    carol = await connect(gw1, "carol")
    assert [m["message_id"] for m in await carol.messages(2, ack=True)] == ["create-g1", "hello-g1"]

    # The monitor, which may only describe topics and groups, reads every group's offsets.
    cluster.env["GOCHAT_MONITOR_INTERVAL_S"] = "0.5"
    monitor = cluster.start_monitor([gw1, gw2])
    async with aiohttp.ClientSession() as http:
        async with asyncio.timeout(WAIT_S):
            while True:
                async with http.get(f"{monitor}/api/overview") as response:
                    overview = await response.json()
                if {"im-logic-group", "im-task-group", "gateway-gw1-group"} <= set(overview["lag_by_group"]):
                    break
                await asyncio.sleep(0.5)
    assert {row["topic"] for row in overview["lag"]} >= {"im-upstream-topic", "im-task-topic",
                                                          "im-downstream-topic-gw1"}

    # No process logged a broker password.
    logs = "".join(log.read_text(errors="replace") for log in cluster.stack.log_dir.glob("*.log"))
    assert "[^Worker]: Ready" in logs
    for user in ("logic", "task", "gateway-gw1", "gateway-gw2", "monitor"):
        assert security.users[user] not in logs

    # Applying the ACLs again changes nothing; the apply is on the audit log, which the
    # operator (and only the operator) reads.
    again = _command(cluster, "acls", "apply", "--gateway", "gw1", "--gateway", "gw2")
    assert again.returncode == 0, again.stderr
    assert "0 ACLs created" in again.stdout
    events = [json.loads(r.value) for r in await read_records(_as(cluster, "operator"), topics.audit(cluster.settings).name)]
    # Each command writes its own chain, on the partition of its producer id: in time order here.
    applies = sorted((e for e in events if e["action"] == "acls.apply"), key=lambda e: e["at"])
    assert len(applies) >= 2 and all(e["outcome"] == "success" for e in applies)
    assert applies[0]["details"]["created"] > 0 and applies[-1]["details"]["created"] == 0


async def _bootstrap(settings: Settings) -> None:
    """Start and stop a producer: its login, or KafkaConnectionError."""
    producer = AIOKafkaProducer(**client_kwargs(settings), request_timeout_ms=5000)
    try:
        await producer.start()
    finally:
        await producer.stop()


async def test_anonymous_wrong_password_and_plaintext_clients_are_refused(
    secured: Cluster, secured_kafka: tuple[KafkaCluster, BrokerSecurity], tmp_path: Path
) -> None:
    cluster, (_, security) = secured, secured_kafka
    ca = str(security.ca)
    # The control: the same client with the right password and TLS logs in.
    await _bootstrap(_as(cluster, "gateway-gw1"))
    refused = {
        # No SASL: TLS alone (no client certificate) authenticates nobody.
        "anonymous": _as(cluster, "gateway-gw1", GOCHAT_BROKER_SECURITY_PROTOCOL="SSL", GOCHAT_BROKER_SSL_CAFILE=ca),
        "wrong password": _as(cluster, "gateway-gw1", GOCHAT_BROKER_SASL_PASSWORD="not-the-password"),
        "wrong password, PLAIN": _as(cluster, "gateway-gw1", GOCHAT_BROKER_SASL_PASSWORD="not-the-password",
                                     GOCHAT_BROKER_SASL_MECHANISM="PLAIN"),
        "no TLS": _as(cluster, "gateway-gw1", GOCHAT_BROKER_SECURITY_PROTOCOL="SASL_PLAINTEXT"),
        "plaintext": _as(cluster, "gateway-gw1", GOCHAT_BROKER_SECURITY_PROTOCOL="PLAINTEXT"),
    }
    for what, settings in refused.items():
        with pytest.raises(KafkaConnectionError):
            await _bootstrap(settings)
        assert what
    # A client that trusts another CA does not talk to the broker either: its certificate is checked.
    other_ca = server_certificate(tmp_path / "other-ca").ca
    with pytest.raises(KafkaConnectionError):
        await _bootstrap(_as(cluster, "gateway-gw1", GOCHAT_BROKER_SSL_CAFILE=str(other_ca)))

    # A service started with a wrong password says why, naming its principal, and does not start.
    port = free_port()
    proc = cluster.stack.spawn("gateway-wrong-password", [sys.executable, "-m", "gochat_streams", "gateway"], {
        **cluster.env, **security.env("gateway-gw1"), "GOCHAT_BROKER_SASL_PASSWORD": "not-the-password",
        "GOCHAT_GATEWAY_ID": "gw1", "GOCHAT_GATEWAY_PORT": str(port)})
    assert proc.wait(WAIT_S) != 0
    log = (cluster.stack.log_dir / "gateway-wrong-password.log").read_text()
    assert "BROKER REFUSED User:gateway-gw1 authentication on broker 127.0.0.1:" in log, log[-3000:]
    assert "SaslAuthenticationFailed" in log
    assert "not-the-password" not in log and security.users["gateway-gw1"] not in log


async def _consume_one(settings: Settings, topic: str, group_id: str | None) -> None:
    """Subscribe to ``topic`` (in ``group_id``) and fetch once: the broker's refusal, if any, raises."""
    consumer = AIOKafkaConsumer(topic, **client_kwargs(settings), group_id=group_id, auto_offset_reset="earliest",
                                enable_auto_commit=False, request_timeout_ms=10000)
    try:
        await consumer.start()
        async with asyncio.timeout(WAIT_S):
            while not consumer.assignment():
                await consumer.getmany(timeout_ms=500)
        await consumer.getmany(timeout_ms=500)
    finally:
        await consumer.stop()


async def test_a_gateway_reads_only_its_own_topic_in_its_own_group_and_only_operators_read_audit(
    secured: Cluster,
) -> None:
    cluster = secured
    s, gw1 = cluster.settings, _as(cluster, "gateway-gw1")
    # The control: gw1 reads its own downstream topic in its own group.
    await _consume_one(gw1, topics.downstream_name(s, "gw1"), topics.gateway_group(s, "gw1").group_id)

    with pytest.raises(TopicAuthorizationFailedError):
        await _consume_one(gw1, topics.task(s).name, topics.gateway_group(s, "gw1").group_id)
    with pytest.raises(TopicAuthorizationFailedError):
        await _consume_one(gw1, topics.downstream_name(s, "gw2"), topics.gateway_group(s, "gw1").group_id)
    with pytest.raises(TopicAuthorizationFailedError):
        await _consume_one(gw1, topics.downstream_name(s, "gw2"), None)
    with pytest.raises(GroupAuthorizationFailedError):
        await _consume_one(gw1, topics.downstream_name(s, "gw1"), topics.logic_group(s).group_id)
    with pytest.raises(GroupAuthorizationFailedError):
        await _consume_one(gw1, topics.downstream_name(s, "gw1"), topics.gateway_group(s, "gw2").group_id)

    # Every service writes audit events; only the operator reads them.
    audit = topics.audit(s).name
    for service in ("gateway-gw1", "logic", "task", "monitor"):
        with pytest.raises(TopicAuthorizationFailedError):
            await _consume_one(_as(cluster, service), audit, None)
    await _consume_one(_as(cluster, "operator"), audit, None)
    # A principal without any ACL reads and writes nothing.
    nobody = _as(cluster, "nobody")
    with pytest.raises(TopicAuthorizationFailedError):
        await _consume_one(nobody, topics.upstream(s).name, None)
    producer = AIOKafkaProducer(**client_kwargs(nobody), request_timeout_ms=10000)
    await producer.start()
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            await producer.send_and_wait(topics.upstream(s).name, b"x", key=b"k")
    finally:
        await producer.stop()


def _refusal_events(log: str) -> list[tuple[str, str, str, str]]:
    """The ``broker.refused`` audit events in a process's log: (actor, action, target, outcome)."""
    events = [json.loads(line[line.index("{"):]) for line in log.splitlines() if '"broker.refused"' in line]
    return [(e["actor"], e["action"], e["target"], e["outcome"]) for e in events]


def test_a_refused_operation_is_logged_and_audited_by_the_service_that_tried_it(secured: Cluster) -> None:
    cluster = secured
    # gw1's principal running as gateway gw2: it may not touch gw2's downstream topic.
    port = free_port()
    proc = cluster.stack.spawn("gateway-impostor", [sys.executable, "-m", "gochat_streams", "gateway"], {
        **cluster.env, **cluster.credentials("gateway-gw1"), "GOCHAT_GATEWAY_ID": "gw2",
        "GOCHAT_GATEWAY_PORT": str(port)})
    assert proc.wait(WAIT_S) != 0
    log = (cluster.stack.log_dir / "gateway-impostor.log").read_text()
    topic = topics.downstream_name(cluster.settings, "gw2")
    assert f"BROKER REFUSED User:gateway-gw1 Describe on topic {topic}: TopicAuthorizationFailed" in log, log[-3000:]
    assert _refusal_events(log) == [("User:gateway-gw1", "broker.refused", f"topic {topic}", "denied")]

    # The logic service may write to any downstream topic but create none.
    settings = _as(cluster, "logic")
    with pytest.raises(BrokerRefused, match=r"BROKER REFUSED User:logic Create on topic .*im-downstream-topic-gw9"):
        asyncio.run(topics.ensure_topics(settings, [topics.downstream(settings, "gw9")]))


#: A worker's app and ACLs, and the resource (kind, name) whose Read its principal is denied.
READ_REFUSALS: dict[str, tuple[str, Callable[..., list[acls.Acl]], Callable[[Settings], tuple[str, str]]]] = {
    # Allowed to describe im-upstream-topic but not to read it: the broker refuses the fetch.
    "logic": ("gochat_streams.app:app", acls.logic_acls, lambda s: ("topic", topics.upstream(s).name)),
    # Allowed to find its group's coordinator but not to join the group.
    "task": ("gochat_streams.app:task_app", acls.task_acls, lambda s: ("group", topics.task_group(s).group_id)),
}


@pytest.mark.parametrize("service", sorted(READ_REFUSALS))
async def test_a_worker_refused_a_read_logs_and_audits_it_and_stops(secured: Cluster, service: str) -> None:
    cluster, s = secured, secured.settings
    app, service_acls, resource_of = READ_REFUSALS[service]
    kind, name = resource_of(s)
    # The service's ACLs for the principal "restricted", but for the Read on that resource.
    plan = service_acls(s, {**acls.DEFAULT_PRINCIPALS, service: "restricted"})
    withheld = acls.Acl("User:restricted", kind, name, "literal", "read")  # type: ignore[arg-type]
    assert withheld in plan
    await acls.apply(_as(cluster, "admin"), [acl for acl in plan if acl != withheld])

    data_dir = cluster.root / service
    data_dir.mkdir()
    proc = cluster.stack.spawn(
        service, [sys.executable, "-m", "faust", "-A", app, "worker", "-l", "info", "--web-port", str(free_port()),
                  "--web-host", "127.0.0.1"],
        {**cluster.env, **cluster.credentials("restricted"), "GOCHAT_DATA_DIR": str(data_dir)})
    # It says so, and stops: it neither waits for its partitions for ever nor goes on without them.
    assert proc.wait(WAIT_S) != 0
    log = (cluster.stack.log_dir / f"{service}.log").read_text()
    assert f"BROKER REFUSED User:restricted Read on {kind} {name}: " in log, log[-3000:]
    assert ("User:restricted", "broker.refused", f"{kind} {name}", "denied") in _refusal_events(log)


async def test_the_chat_path_works_on_three_secured_nodes_with_the_specs_replicas(cluster: Cluster, connect: Any) -> None:
    """Three nodes, secured: controllers and brokers talk to each other over SASL_SSL too (no
    PLAINTEXT listener, no anonymous super user), so the controllers form a quorum and elect
    leaders, and an acks=all record reaches the followers' replicas."""
    security = broker_security(cluster.root / "tls")
    kafka = cluster.stack.start_kafka(3, security=security)
    for node in kafka.nodes.values():
        properties = node.config.read_text()
        assert "PLAINTEXT" not in properties and "super.users=User:admin\n" in properties
    for name in [name for name in cluster.env if name.endswith("_REPLICAS")]:
        del cluster.env[name]  # the spec's: 3 copies of each topic, a write needs 2 (cluster3)
    secured = _secure(cluster, kafka, security)
    secured.start_worker()
    gw1, gw2 = secured.start_gateway("gw1"), secured.start_gateway("gw2")
    await _single_chat(connect, gw1, gw2)

    # Each partition of the message's topics has the spec's replicas (upstream 3, downstream 2),
    # enough of them in sync for an acks=all write (upstream: 2): the brokers replicate to each other.
    specs = [topics.upstream(secured.settings), topics.downstream(secured.settings, "gw2")]
    admin = AIOKafkaAdminClient(**client_kwargs(_as(secured, "admin")))
    await admin.start()
    try:
        described = {t["topic"]: t["partitions"] for t in await admin.describe_topics([spec.name for spec in specs])}
    finally:
        await admin.close()
    for spec in specs:
        assert all(len(p["replicas"]) == spec.replicas and len(p["isr"]) >= spec.min_insync_replicas
                   for p in described[spec.name]), (spec, described[spec.name])
