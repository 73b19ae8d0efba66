"""The ACL plan (acls.py) and the secured broker's properties (devstack.py), without a broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from gochat_streams import acls, topics
from gochat_streams.acls import Acl
from gochat_streams.devstack import BrokerSecurity, kafka_properties
from gochat_streams.settings import Settings

S = Settings(namespace="t.")
PLAN = acls.plan(S, ["gw1", "gw2"])


def allowed(principal: str, operation: str, resource_type: str, name: str) -> bool:
    """Whether the plan lets ``principal`` do ``operation`` on ``name``, as Kafka matches
    literal and prefixed patterns."""
    return any(a.principal == principal and a.operation == operation and a.resource_type == resource_type
               and (a.resource == name if a.pattern == "literal" else name.startswith(a.resource))
               for a in PLAN)


GW1 = "User:gateway-gw1"


def test_a_gateway_writes_upstream_and_user_and_reads_only_its_own_downstream_in_its_own_group() -> None:
    for spec in (topics.upstream(S), topics.user(S), topics.audit(S)):
        assert allowed(GW1, "write", "topic", spec.name)
    assert allowed(GW1, "read", "topic", topics.downstream_name(S, "gw1"))
    assert allowed(GW1, "read", "group", topics.gateway_group(S, "gw1").group_id)
    assert not allowed(GW1, "read", "topic", topics.downstream_name(S, "gw2"))
    assert not allowed(GW1, "read", "topic", topics.task(S).name)
    assert not allowed(GW1, "read", "topic", topics.upstream(S).name)
    assert not allowed(GW1, "read", "group", topics.logic_group(S).group_id)
    assert not allowed(GW1, "read", "group", topics.gateway_group(S, "gw2").group_id)
    # Gateways create nothing: an admin creates their topics.
    assert not [a for a in PLAN if a.principal.startswith("User:gateway-") and a.operation == "create"]


def test_only_operators_read_the_audit_topic_and_every_service_writes_it() -> None:
    audit = topics.audit(S).name
    readers = {a.principal for a in PLAN if a.resource == audit and a.operation == "read"}
    assert readers == {"User:operator"}
    for who in ("User:gateway-gw1", "User:gateway-gw2", "User:logic", "User:task", "User:monitor"):
        assert allowed(who, "write", "topic", audit)


def test_the_logic_service_writes_every_downstream_topic_but_creates_only_its_changelogs() -> None:
    assert allowed("User:logic", "write", "topic", topics.downstream_name(S, "any-gateway"))
    assert not allowed("User:logic", "create", "topic", topics.downstream_name(S, "any-gateway"))
    assert not allowed("User:logic", "read", "topic", topics.downstream_name(S, "gw1"))
    assert allowed("User:logic", "create", "topic", "t.im-logic-group-presence-changelog")
    assert allowed("User:logic", "read", "group", topics.logic_group(S).group_id)
    assert not allowed("User:logic", "read", "topic", topics.task(S).name)
    creates = {(a.principal, a.resource, a.pattern) for a in PLAN if a.operation == "create"}
    assert creates == {("User:logic", "t.im-logic-group-", "prefixed"), ("User:task", "t.im-task-group-", "prefixed")}


def test_the_monitor_describes_and_reads_only_alerts() -> None:
    monitor = [a for a in PLAN if a.principal == "User:monitor"]
    assert {a.resource for a in monitor if a.operation == "read"} == {topics.alert(S).name}
    assert {a.operation for a in monitor} == {"describe", "read", "write"}
    assert {a.resource for a in monitor if a.operation == "write"} == {topics.alert(S).name, topics.audit(S).name}
    assert allowed("User:monitor", "describe", "group", topics.gateway_group(S, "gw7").group_id)


def test_the_plan_is_sorted_without_duplicates_and_follows_principal_names() -> None:
    assert PLAN == sorted(set(PLAN))
    renamed = acls.plan(S, ["gw1"], {**acls.DEFAULT_PRINCIPALS, "logic": "svc-logic", "gateway": "gw-"})
    assert {a.principal for a in renamed} == {"User:svc-logic", "User:gw-gw1", "User:task", "User:monitor",
                                              "User:operator"}
    # Each service's plan stands for exactly the topics it ensures (topics.py): it may describe all of them.
    for who, own in (("User:logic", topics.logic_topics(S)), ("User:task", topics.task_topics(S)),
                     ("User:monitor", topics.monitor_topics(S)), (GW1, topics.gateway_topics(S, "gw1"))):
        assert all(allowed(who, "describe", "topic", spec.name) for spec in own), who


def test_create_acls_request_carries_kafka_codes() -> None:
    request = acls._CreateAcls([Acl("User:logic", "topic", "t.im-downstream-topic-", "prefixed", "write")])
    struct = request.build(acls.CreateAclsRequest_v1)
    # TOPIC 2, PREFIXED 4, WRITE 4, ALLOW 3, any host.
    assert struct.creations == [(2, "t.im-downstream-topic-", 4, "User:logic", "*", 4, 3)]


def test_acls_read_back_from_a_describe_response() -> None:
    response = acls.DescribeAclsResponse_v1(0, 0, None, [
        (3, "t.im-logic-group", 3, [("User:logic", "*", 3, 3), ("User:x", "10.0.0.1", 3, 3)]),
        (4, "kafka-cluster", 3, [("User:admin", "*", 7, 3)]),
    ])
    assert acls._acls_of(response) == {Acl("User:logic", "group", "t.im-logic-group", "literal", "read")}


def test_a_secured_node_has_no_plaintext_listener_and_no_anonymous_super_user(tmp_path: Path) -> None:
    security = BrokerSecurity(tmp_path / "ca.pem", tmp_path / "keystore.pem", {"admin": "pw-a", "logic": "pw-l"})
    props = kafka_properties(1, {1: (9092, 9093)}, tmp_path, security)
    assert props["listener.security.protocol.map"] == "BROKER:SASL_SSL,CONTROLLER:SASL_SSL"
    assert "PLAINTEXT" not in props["listeners"] and "PLAINTEXT" not in props["advertised.listeners"]
    assert props["super.users"] == "User:admin"
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["authorizer.class.name"].endswith("StandardAuthorizer")
    assert props["ssl.keystore.type"] == props["ssl.truststore.type"] == "PEM"
    assert set(props["sasl.enabled.mechanisms"].split(",")) == {"PLAIN", "SCRAM-SHA-512"}
    assert 'user_logic="pw-l"' in props["listener.name.broker.plain.sasl.jaas.config"]
    # The unsecured default stays as it was.
    assert kafka_properties(1, {1: (9092, 9093)}, tmp_path)["listener.security.protocol.map"] == \
        "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"


def test_broker_accounts_must_be_safe_to_put_in_a_jaas_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="admin"):
        BrokerSecurity(tmp_path / "ca.pem", tmp_path / "k.pem", {"logic": "pw"})
    with pytest.raises(ValueError, match="passwords"):
        BrokerSecurity(tmp_path / "ca.pem", tmp_path / "k.pem", {"admin": 'a" user_evil="x'})


def test_a_refusal_names_principal_operation_and_resource_and_is_audited(caplog: pytest.LogCaptureFixture) -> None:
    from aiokafka.errors import TopicAuthorizationFailedError

    from gochat_streams.audit import AuditLog
    from gochat_streams.kafka import BrokerRefused, is_refusal, refused

    s = Settings(broker_url="kafka://10.0.0.5:9093", broker_security_protocol="SASL_SSL",
                 broker_sasl_username="gateway-gw1", broker_sasl_password="pw-secret")
    audit = AuditLog("gateway")
    error = TopicAuthorizationFailedError("t.im-task-topic")
    assert is_refusal(error) and not is_refusal(RuntimeError())
    with caplog.at_level("INFO"):
        raised = refused(s, "Read", "topic t.im-task-topic", error, audit)
    assert isinstance(raised, BrokerRefused)
    line = "BROKER REFUSED User:gateway-gw1 Read on topic t.im-task-topic: TopicAuthorizationFailedError"
    assert str(raised).startswith(line)
    assert any(r.getMessage().startswith(line) for r in caplog.records)
    assert "pw-secret" not in caplog.text
    assert audit.pending == 1
    # Without SASL the broker knows nobody.
    assert "User:ANONYMOUS" in str(refused(Settings(), "Write", "topic x", "TopicAuthorizationFailed"))


def test_a_refusal_from_aiokafka_names_its_resource() -> None:
    from aiokafka.errors import (
        ClusterAuthorizationFailedError,
        GroupAuthorizationFailedError,
        TopicAuthorizationFailedError,
    )

    from gochat_streams.kafka import refused_resource

    assert refused_resource(TopicAuthorizationFailedError("t.im-upstream-topic")) == "topic t.im-upstream-topic"
    # A refused commit names every topic it was refused.
    assert refused_resource(TopicAuthorizationFailedError({"b", "a"})) == "topic a, b"
    assert refused_resource(GroupAuthorizationFailedError("t.im-task-group")) == "group t.im-task-group"
    assert refused_resource(ClusterAuthorizationFailedError()) == "cluster"
