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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import GroupAuthorizationFailedError, KafkaConnectionError, TopicAuthorizationFailedError
from aiokafka.helpers import create_ssl_context

from gochat_streams import topics
from gochat_streams.audit import read_records
from gochat_streams.devstack import BrokerSecurity, KafkaCluster, Stack, free_port
from gochat_streams.kafka import BrokerRefused, client_kwargs
from gochat_streams.settings import Settings

from ..tls import broker_security
from .conftest import WAIT_S, Cluster

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
    created and its ACLs applied by the admin."""
    kafka, security = secured_kafka
    cluster.env.update(GOCHAT_BROKER_URL=kafka.url, **security.env("admin"))
    cluster.credentials = security.env
    created = _command(cluster, "create-topics", *(arg for g in GATEWAYS for arg in ("--gateway", g)))
    assert created.returncode == 0, created.stderr
    applied = _command(cluster, "acls", "apply", *(arg for g in GATEWAYS for arg in ("--gateway", g)))
    assert applied.returncode == 0, applied.stderr
    assert "ACLs created, 0 already there" in applied.stdout
    return cluster


def _as(cluster: Cluster, user: str, **overrides: str) -> Settings:
    env = {**cluster.env, **cluster.credentials(user), **overrides}
    return Settings(**{k[len("GOCHAT_"):].lower(): v for k, v in env.items()})


async def test_the_chat_path_works_with_sasl_ssl_and_each_service_on_its_own_principal(
    secured: Cluster, connect: Any
) -> None:
    cluster = secured
    cluster.start_worker()
    cluster.start_task_worker()
    gw1, gw2 = cluster.start_gateway("gw1"), cluster.start_gateway("gw2")

    # Single chat across two gateways.
    alice, bob = await connect(gw1, "alice"), await connect(gw2, "bob")
    await alice.send("m1", "bob", content="hi bob")
    assert await alice.next_frame() == {"type": "ack", "message_id": "m1"}
    [message] = await bob.messages(1, ack=True)
    assert (message["message_id"], message["from_user_id"], message["content"]) == ("m1", "alice", "hi bob")

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

    # Applying the ACLs again changes nothing; the apply is on the audit log, which the
    # operator (and only the operator) reads.
    again = _command(cluster, "acls", "apply", "--gateway", "gw1", "--gateway", "gw2")
    assert again.returncode == 0, again.stderr
    assert "0 ACLs created" in again.stdout
    events = [json.loads(r.value) for r in await read_records(_as(cluster, "operator"), topics.audit(cluster.settings).name)]
    applies = [e for e in events if e["action"] == "acls.apply"]
    assert len(applies) >= 2 and all(e["outcome"] == "success" for e in applies)
    assert applies[0]["details"]["created"] > 0 and applies[-1]["details"]["created"] == 0
