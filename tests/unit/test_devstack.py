"""The dev Kafka's node configuration (gochat_streams/devstack.py), without starting a JVM."""

from pathlib import Path

import pytest

from gochat_streams.devstack import kafka_properties, new_cluster_id

NODES = {1: (9001, 9101), 2: (9002, 9102), 3: (9003, 9103)}


@pytest.mark.parametrize("nodes", [{1: (9001, 9101)}, NODES])
def test_every_listener_is_on_loopback(nodes: dict[int, tuple[int, int]]) -> None:
    """The dev broker asks nobody who they are: nothing beyond this machine may reach it."""
    for node_id in nodes:
        props = kafka_properties(node_id, nodes, Path("/data"))
        addresses = [listener.split("://", 1)[1] for key in ("listeners", "advertised.listeners")
                     for listener in props[key].split(",")]
        voters = [voter.split("@", 1)[1] for voter in props["controller.quorum.voters"].split(",")]
        assert addresses and all(address.startswith("127.0.0.1:") for address in addresses + voters)
        assert props["listener.security.protocol.map"] == "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"


def test_a_node_names_its_own_ports_and_every_voter() -> None:
    props = kafka_properties(2, NODES, Path("/data/node-2"))
    assert props["node.id"] == "2"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9002,CONTROLLER://127.0.0.1:9102"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9002"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:9101,2@127.0.0.1:9102,3@127.0.0.1:9103"
    assert props["log.dirs"] == "/data/node-2"


@pytest.mark.parametrize(("nodes", "replicas", "min_isr"), [({1: (9001, 9101)}, "1", "1"), (NODES, "3", "2")])
def test_internal_topics_and_defaults_fit_the_cluster(nodes: dict[int, tuple[int, int]], replicas: str,
                                                      min_isr: str) -> None:
    props = kafka_properties(1, nodes, Path("/data"))
    assert [props[key] for key in ("default.replication.factor", "offsets.topic.replication.factor",
                                   "transaction.state.log.replication.factor")] == [replicas] * 3
    assert [props[key] for key in ("min.insync.replicas", "transaction.state.log.min.isr")] == [min_isr] * 2


def test_the_dev_and_test_sessions_are_allowed_and_topics_are_the_projects() -> None:
    props = kafka_properties(1, {1: (9001, 9101)}, Path("/data"))
    assert int(props["group.min.session.timeout.ms"]) < 4000  # DEV_ENV's 4 s sessions
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["auto.create.topics.enable"] == "false"
    assert int(props["broker.heartbeat.interval.ms"]) < int(props["broker.session.timeout.ms"])


def test_cluster_ids_are_kafkas_form() -> None:
    ids = {new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 22 and not i.startswith("-") and "=" not in i for i in ids)

