"""The broker's access control lists (spec ACL 控制): one principal per service, least privilege.

:func:`plan` computes every ACL from the settings and topics.py; ``python -m gochat_streams
acls plan`` prints it, ``... acls apply`` creates on the broker what it lacks (run as the
broker's super user; idempotent: an ACL already there is left as it is). Kafka's
StandardAuthorizer allows nothing that no ACL allows (``allow.everyone.if.no.acl.found=false``).

Principals (``User:<name>``, the SASL user name), overridable with ``--principal SERVICE=NAME``:

=============== ============================================================================
gateway-{id}    writes im-upstream-topic, im-user-topic (acks, bounces, presence), the
                upstream dead letters and alerts (a downstream record it cannot push); reads
                only its own im-downstream-topic-{id}, in only its own gateway-{id}-group
logic           reads im-upstream/group/user-topic in im-logic-group; writes im-group-topic,
                im-user-topic, every im-downstream-topic-* (a prefixed ACL: write, not
                create), im-task-topic, im-upstream-dlq, alerts; creates and uses its tables'
                changelogs (topics prefixed by its group id, as Faust names them)
task            reads im-task-topic in im-task-group; writes im-user-topic (group fan-out
                batches), im-task-dlq, alerts; its own changelogs
monitor         describes every topic and consumer group (offsets, lag: no record read),
                reads and writes im-alert-topic (it tails alerts and raises its rules' own)
operator        reads the dead-letter topics and im-audit-topic; writes a replayed dead
                letter back to its source topic
=============== ============================================================================

Every service writes (and describes) im-audit-topic; only operators read it. No service
may create a topic but its own changelogs: the spec's topics and each gateway's downstream
topic are created by an admin (``create-topics --gateway ID``), so a gateway holds no
cluster-wide create right. Idempotent producers need no cluster ACL since Kafka 3.0 (a
Write on a topic implies IdempotentWrite, KIP-679).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.admin import (
    CreateAclsRequest_v1,
    CreateAclsResponse_v1,
    DescribeAclsRequest_v1,
    DescribeAclsResponse_v1,
)
from aiokafka.protocol.api import Request

from . import topics
from .kafka import client_kwargs
from .settings import Settings

Service = Literal["gateway", "logic", "task", "monitor", "operator"]
SERVICES: tuple[Service, ...] = ("gateway", "logic", "task", "monitor", "operator")
ResourceType = Literal["topic", "group"]
Pattern = Literal["literal", "prefixed"]
Operation = Literal["read", "write", "create", "describe"]

# Kafka's codes (org.apache.kafka.common.acl / resource).
_RESOURCE_CODES = {"any": 1, "topic": 2, "group": 3}
_PATTERN_CODES = {"any": 1, "literal": 3, "prefixed": 4}
_OPERATION_CODES = {"any": 1, "read": 3, "write": 4, "create": 5, "describe": 8}
_ALLOW, _ANY_PERMISSION = 3, 1
_CODE_NAMES = {kind: {code: name for name, code in codes.items()}
               for kind, codes in (("resource", _RESOURCE_CODES), ("pattern", _PATTERN_CODES),
                                   ("operation", _OPERATION_CODES))}

#: Default principal names: ``gateway`` is a prefix, one principal per gateway id.
DEFAULT_PRINCIPALS: Mapping[Service, str] = {"gateway": "gateway-", "logic": "logic", "task": "task",
                                              "monitor": "monitor", "operator": "operator"}


@dataclass(frozen=True, order=True)
class Acl:
    """One ALLOW binding, from any host."""

    principal: str
    resource_type: ResourceType
    resource: str
    pattern: Pattern
    operation: Operation

    def __str__(self) -> str:
        return f"{self.principal:<24} {self.operation:<9} {self.resource_type:<6} {self.pattern:<9} {self.resource}"


def principal_of(service: Service, gateway_id: str | None = None,
                 names: Mapping[Service, str] = DEFAULT_PRINCIPALS) -> str:
    """``User:<name>`` of a service; a gateway's is its prefix followed by its id."""
    name = names[service]
    return f"User:{name}{gateway_id}" if service == "gateway" else f"User:{name}"


def _grant(principal: str, operations: Iterable[Operation], resource_type: ResourceType, resource: str,
           pattern: Pattern = "literal") -> list[Acl]:
    return [Acl(principal, resource_type, resource, pattern, op) for op in operations]


def _writes(principal: str, *specs: topics.TopicSpec) -> list[Acl]:
    return [acl for spec in specs for acl in _grant(principal, ("write", "describe"), "topic", spec.name)]


def _reads(principal: str, *specs: topics.TopicSpec) -> list[Acl]:
    return [acl for spec in specs for acl in _grant(principal, ("read", "describe"), "topic", spec.name)]


def _changelogs(principal: str, app_id: str) -> list[Acl]:
    """A Faust app's own topics (``<app id>-<table>-changelog``, repartition topics): it creates and uses them."""
    return _grant(principal, ("create", "read", "write", "describe"), "topic", f"{app_id}-", "prefixed")


def gateway_acls(s: Settings, gateway_id: str, names: Mapping[Service, str] = DEFAULT_PRINCIPALS) -> list[Acl]:
    who = principal_of("gateway", gateway_id, names)
    return [*_writes(who, topics.upstream(s), topics.user(s), topics.upstream_dlq(s), topics.alert(s), topics.audit(s)),
            *_reads(who, topics.downstream(s, gateway_id)),
            *_grant(who, ("read", "describe"), "group", topics.gateway_group(s, gateway_id).group_id)]


def logic_acls(s: Settings, names: Mapping[Service, str] = DEFAULT_PRINCIPALS) -> list[Acl]:
    who, group = principal_of("logic", names=names), topics.logic_group(s).group_id
    return [*_reads(who, topics.upstream(s), topics.group(s), topics.user(s)),
            *_writes(who, topics.group(s), topics.user(s), topics.task(s), topics.upstream_dlq(s), topics.alert(s),
                     topics.audit(s)),
            *_grant(who, ("write", "describe"), "topic", topics.downstream_name(s, ""), "prefixed"),
            *_grant(who, ("read", "describe"), "group", group),
            *_changelogs(who, group)]


def task_acls(s: Settings, names: Mapping[Service, str] = DEFAULT_PRINCIPALS) -> list[Acl]:
    who, group = principal_of("task", names=names), topics.task_group(s).group_id
    return [*_reads(who, topics.task(s)),
            *_writes(who, topics.user(s), topics.task_dlq(s), topics.alert(s), topics.audit(s)),
            *_grant(who, ("read", "describe"), "group", group),
            *_changelogs(who, group)]


def monitor_acls(s: Settings, names: Mapping[Service, str] = DEFAULT_PRINCIPALS) -> list[Acl]:
    who = principal_of("monitor", names=names)
    described = [spec for spec in topics.core(s) if spec.name not in (topics.alert(s).name, topics.audit(s).name)]
    return [*(acl for spec in described for acl in _grant(who, ("describe",), "topic", spec.name)),
            *_grant(who, ("describe",), "topic", topics.downstream_name(s, ""), "prefixed"),
            *_reads(who, topics.alert(s)), *_writes(who, topics.alert(s), topics.audit(s)),
            *_grant(who, ("describe",), "group", topics.logic_group(s).group_id),
            *_grant(who, ("describe",), "group", topics.task_group(s).group_id),
            *_grant(who, ("describe",), "group", f"{s.namespace}gateway-", "prefixed")]


def operator_acls(s: Settings, names: Mapping[Service, str] = DEFAULT_PRINCIPALS) -> list[Acl]:
    who = principal_of("operator", names=names)
    return [*_reads(who, topics.upstream_dlq(s), topics.task_dlq(s), topics.audit(s)),
            # A replay sends a dead letter's record back to where it came from (commands.py).
            *_writes(who, topics.upstream(s), topics.group(s), topics.user(s), topics.task(s), topics.audit(s))]


def plan(s: Settings, gateway_ids: Iterable[str], names: Mapping[Service, str] = DEFAULT_PRINCIPALS) -> list[Acl]:
    """Every ACL of the system with the gateways ``gateway_ids``, sorted, each once."""
    acls = {*logic_acls(s, names), *task_acls(s, names), *monitor_acls(s, names), *operator_acls(s, names)}
    for gateway_id in gateway_ids:
        acls.update(gateway_acls(s, gateway_id, names))
    return sorted(acls)


# ---- on the broker ----------------------------------------------------------------------------
# aiokafka's admin client has no create_acls/describe_acls: its protocol module has the
# requests, sent here through the admin client's connection. Version 1 of both (Kafka 4
# serves 1-3; aiokafka's wrappers take one ACL per request and may pick a version they
# encode wrongly), so these builders fix it.


class _CreateAcls(Request[CreateAclsRequest_v1]):
    API_KEY = 30

    def __init__(self, acls: list[Acl]) -> None:
        self.acls = acls

    def build(self, request_struct_class: type[CreateAclsRequest_v1]) -> CreateAclsRequest_v1:
        return request_struct_class([(_RESOURCE_CODES[a.resource_type], a.resource, _PATTERN_CODES[a.pattern],
                                      a.principal, "*", _OPERATION_CODES[a.operation], _ALLOW) for a in self.acls])


class _DescribeAllAcls(Request[DescribeAclsRequest_v1]):
    API_KEY = 29

    def build(self, request_struct_class: type[DescribeAclsRequest_v1]) -> DescribeAclsRequest_v1:
        return request_struct_class(_RESOURCE_CODES["any"], None, _PATTERN_CODES["any"], None, None,
                                    _OPERATION_CODES["any"], _ANY_PERMISSION)


class AclError(RuntimeError):
    pass


def _acls_of(response: DescribeAclsResponse_v1) -> set[Acl]:
    """The ALLOW-from-anywhere bindings of ``response`` that this module can name."""
    found = set()
    for resource_type, name, pattern, bindings in response.resources:
        kind = _CODE_NAMES["resource"].get(resource_type)
        pattern_name = _CODE_NAMES["pattern"].get(pattern)
        for principal, host, operation, permission in bindings:
            op = _CODE_NAMES["operation"].get(operation)
            if kind in ("topic", "group") and pattern_name and op and host == "*" and permission == _ALLOW:
                found.add(Acl(principal, kind, name, pattern_name, op))  # type: ignore[arg-type]
    return found


async def existing(admin: AIOKafkaAdminClient) -> set[Acl]:
    response: Any = await admin._send_request(_DescribeAllAcls())
    if response.error_code:
        raise AclError(f"the broker refused to list ACLs: error {response.error_code} {response.error_message}")
    return _acls_of(response)


async def apply(s: Settings, wanted: list[Acl]) -> tuple[list[Acl], list[Acl]]:
    """Create the ACLs of ``wanted`` the broker lacks; (created, already there)."""
    admin = AIOKafkaAdminClient(**client_kwargs(s))
    await admin.start()
    try:
        there = await existing(admin)
        missing = [acl for acl in wanted if acl not in there]
        if missing:
            response: CreateAclsResponse_v1 = await admin._send_request(_CreateAcls(missing))  # type: ignore[assignment]
            failed = [(acl, code, message) for acl, (code, message) in zip(missing, response.creation_responses)
                      if code]
            if failed:
                raise AclError("the broker refused ACLs: " + "; ".join(f"{acl} (error {code} {message})"
                                                                        for acl, code, message in failed))
        return missing, [acl for acl in wanted if acl in there]
    finally:
        await admin.close()
