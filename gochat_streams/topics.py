"""Every topic and consumer group: names, keys, values, partitions, replicas, retention, compression.

The spec's table, plus one internal topic:

============================== ================= ======================= ==== ==== ========= =================
topic                          key               value                   part repl retention group
============================== ================= ======================= ==== ==== ========= =================
im-upstream-topic              from_user_id      UpstreamMessage          10    3  7 d       im-logic-group
im-group-topic (internal)      group_id          UpstreamMessage          10    3  1 d       im-logic-group
im-user-topic (internal)       user_id           UserEvent                10    3  1 d       im-logic-group
im-downstream-topic-{gateway}  to_user_id        DownstreamMessage         3    2  1 d       gateway-{id}-group
im-task-topic                  task_type         Task                      5    3  3 d       im-task-group
im-upstream-dlq                source key        DeadLetter                3    3  14 d      (operators)
im-task-dlq                    source key        DeadLetter                3    3  14 d      (operators)
im-alert-topic                 reason            Alert                     1    3  7 d       (alerting)
im-audit-topic                 producer id       audit event               3    3  365 d     (operators)
============================== ================= ======================= ==== ==== ========= =================

Every topic is lz4 and has a ``min.insync.replicas`` of its own (:func:`min_insync_replicas`):
2 for the topics of 3 replicas, 1 for the downstream topics' 2. The tables' changelogs,
which Faust creates, take it too (:func:`changelog_config`, tables/).

The logic service dead-letters to ``im-upstream-dlq`` whatever it cannot handle from
any of its topics; the task service to ``im-task-dlq``. Each dead letter also raises an
alert event.

``im-group-topic`` is the upstream's group and system messages re-keyed by group (or
conversation) id, where the groups table lives (agents/groups.py). ``im-user-topic`` is
everything re-keyed by recipient: the presence and inbox tables are written from it, so
a worker reads them only for the users whose partitions it owns, which are exactly the
users whose messages it routes (agents/delivery.py).

A downstream record's value is one message (or a :class:`Refusal`); its headers say
to whom. ``DOWNSTREAM_RECIPIENTS``: a JSON object, each user to push to -> that user's
inbox sequence number (the client acknowledges it); for a group message, the members
on this gateway whose records share a partition (routing.by_partition), so one record
serves many without leaving any user's order. The record's key is the first of them.
``DOWNSTREAM_CONNECTION``: the one socket to push to (reconnect sync, one recipient).
Without recipients the key is the one user: an echo of the user's own message (no
sequence number), or, with ``DOWNSTREAM_KIND`` ``error``, a refusal.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.protocol.metadata import MetadataRequest

from .kafka import Recorder, client_kwargs, refused, start_client, wait_until_served
from .settings import Settings

if TYPE_CHECKING:
    import faust

log = logging.getLogger(__name__)

UPSTREAM = "im-upstream-topic"
GROUP = "im-group-topic"
USER = "im-user-topic"
TASK = "im-task-topic"
DOWNSTREAM_PREFIX = "im-downstream-topic-"
UPSTREAM_DLQ = "im-upstream-dlq"
TASK_DLQ = "im-task-dlq"
ALERT = "im-alert-topic"
AUDIT = "im-audit-topic"

DOWNSTREAM_RECIPIENTS = "gochat-recipients"
DOWNSTREAM_CONNECTION = "gochat-connection"
DOWNSTREAM_KIND = "gochat-kind"

_TOPIC_ALREADY_EXISTS = 36
#: TOPIC_AUTHORIZATION_FAILED, CLUSTER_AUTHORIZATION_FAILED
_REFUSED = {29: "TopicAuthorizationFailed", 31: "ClusterAuthorizationFailed"}


@dataclass(frozen=True)
class TopicSpec:
    name: str
    key: str
    value: str
    partitions: int
    replicas: int
    retention_ms: int
    compression: str
    min_insync_replicas: int

    @property
    def config(self) -> dict[str, str]:
        return {"retention.ms": str(self.retention_ms), "compression.type": self.compression,
                "min.insync.replicas": str(self.min_insync_replicas)}


def min_insync_replicas(s: Settings, replicas: int) -> int:
    """The copies an acks=all write waits for: the setting, but fewer than ``replicas``.

    One fewer at most, so that a topic stays writable with one of its brokers down: the
    spec's 3 replicas take 2, the downstream topics' 2 take 1 (each is one gateway's, and
    that gateway's consumer reads what was pushed anyway).
    """
    return max(1, min(s.min_insync_replicas, replicas - 1))


def changelog_config(s: Settings, replicas: int) -> dict[str, str]:
    """What a table's changelog, which Faust creates with ``replicas``, takes beyond Faust's own config."""
    return {"compression.type": s.compression, "min.insync.replicas": str(min_insync_replicas(s, replicas))}


def _spec(s: Settings, name: str, key: str, value: str, partitions: int, replicas: int,
          retention_ms: int) -> TopicSpec:
    return TopicSpec(name, key, value, partitions, replicas, retention_ms, s.compression,
                     min_insync_replicas(s, replicas))


def upstream(s: Settings) -> TopicSpec:
    return _spec(s, s.namespace + UPSTREAM, "from_user_id", "UpstreamMessage", s.upstream_partitions,
                 s.upstream_replicas, s.upstream_retention_ms)


def group(s: Settings) -> TopicSpec:
    return _spec(s, s.namespace + GROUP, "group_id", "UpstreamMessage", s.group_partitions, s.group_replicas,
                 s.group_retention_ms)


def user(s: Settings) -> TopicSpec:
    return _spec(s, s.namespace + USER, "user_id", "UserEvent", s.user_partitions, s.user_replicas,
                 s.user_retention_ms)


def downstream(s: Settings, gateway_id: str) -> TopicSpec:
    return _spec(s, downstream_name(s, gateway_id), "to_user_id", "DownstreamMessage", s.downstream_partitions,
                 s.downstream_replicas, s.downstream_retention_ms)


def task(s: Settings) -> TopicSpec:
    return _spec(s, s.namespace + TASK, "task_type", "Task", s.task_partitions, s.task_replicas,
                 s.task_retention_ms)


def upstream_dlq(s: Settings) -> TopicSpec:
    return _spec(s, s.namespace + UPSTREAM_DLQ, "source key", "DeadLetter", s.dlq_partitions, s.dlq_replicas,
                 s.dlq_retention_ms)


def task_dlq(s: Settings) -> TopicSpec:
    return _spec(s, s.namespace + TASK_DLQ, "source key", "DeadLetter", s.dlq_partitions, s.dlq_replicas,
                 s.dlq_retention_ms)


def alert(s: Settings) -> TopicSpec:
    return _spec(s, s.namespace + ALERT, "reason", "Alert", 1, s.alert_replicas, s.alert_retention_ms)


def audit(s: Settings) -> TopicSpec:
    """Keyed by the writing process's producer id: its hash chain stays in order on one partition (audit.py)."""
    return _spec(s, s.namespace + AUDIT, "producer id", "audit event", s.audit_partitions, s.audit_replicas,
                 s.audit_retention_ms)


def downstream_name(s: Settings, gateway_id: str) -> str:
    return f"{s.namespace}{DOWNSTREAM_PREFIX}{gateway_id}"


def core(s: Settings) -> list[TopicSpec]:
    """The topics that exist before any gateway starts."""
    return [upstream(s), group(s), user(s), task(s), upstream_dlq(s), task_dlq(s), alert(s), audit(s)]


@dataclass(frozen=True)
class ConsumerGroup:
    """A consumer group's settings as the spec's "消费者组配置" lists them."""

    group_id: str
    auto_offset_reset: Literal["earliest", "latest"]
    enable_auto_commit: bool
    max_poll_records: int
    session_timeout_ms: int
    heartbeat_interval_ms: int


def logic_group(s: Settings) -> ConsumerGroup:
    return ConsumerGroup(s.namespace + "im-logic-group", "earliest", False, 100,
                         int(s.session_timeout_s * 1000), int(s.heartbeat_interval_s * 1000))


def gateway_group(s: Settings, gateway_id: str) -> ConsumerGroup:
    return ConsumerGroup(f"{s.namespace}gateway-{gateway_id}-group", "latest", True, 50,
                         int(s.session_timeout_s * 1000), int(s.heartbeat_interval_s * 1000))


def task_group(s: Settings) -> ConsumerGroup:
    return ConsumerGroup(s.namespace + "im-task-group", "earliest", False, 200,
                         int(s.session_timeout_s * 1000), int(s.heartbeat_interval_s * 1000))


def faust_topic(app: faust.App, spec: TopicSpec) -> faust.TopicT:
    """A Faust topic of raw bytes: codecs.py, not Faust, parses values."""
    return app.topic(
        spec.name,
        partitions=spec.partitions,
        replicas=spec.replicas,
        config=spec.config,
        key_type=str,
        key_serializer="raw",
        value_serializer="raw",
    )


def gateway_topics(s: Settings, gateway_id: str) -> list[TopicSpec]:
    """What a gateway writes (upstream, acks and presence, the dead letters and alerts of records
    it cannot push, audit events) and reads (its own downstream topic)."""
    return [upstream(s), user(s), upstream_dlq(s), alert(s), audit(s), downstream(s, gateway_id)]


def logic_topics(s: Settings) -> list[TopicSpec]:
    """What the logic service reads and writes, the gateways' downstream topics aside."""
    return [upstream(s), group(s), user(s), task(s), upstream_dlq(s), alert(s), audit(s)]


def task_topics(s: Settings) -> list[TopicSpec]:
    return [task(s), user(s), task_dlq(s), alert(s), audit(s)]


def monitor_topics(s: Settings) -> list[TopicSpec]:
    """What the monitor writes and reads records of; the others it only describes."""
    return [alert(s), audit(s)]


async def ensure_topics(s: Settings, specs: list[TopicSpec], audit: Recorder | None = None) -> None:
    """Create the topics of ``specs`` that do not exist yet; existing ones are left as they are.

    Asks first which exist, and creates only the others: a service that may not create
    topics (acls.py) starts when an admin has created them. A topic this process may not
    describe, or may not create, raises ``kafka.BrokerRefused``, logged (and recorded in
    ``audit``) as what the broker refused, to whom.

    Returns once every broker serves them (:func:`wait_until_served`): a consumer
    group that subscribes next is assigned all their partitions.
    """
    admin = AIOKafkaAdminClient(**client_kwargs(s))
    await start_client(s, admin, audit)
    try:
        # Named, not all topics (a principal may describe only its own); never auto-created.
        response = await admin._send_request(MetadataRequest([t.name for t in specs], allow_auto_topic_creation=False))
        answers = {t["topic"]: t["error_code"] for t in response.to_object()["topics"]}
        if denied := sorted(name for name, code in answers.items() if code in _REFUSED):
            raise refused(s, "Describe", f"topic {', '.join(denied)}", _REFUSED[answers[denied[0]]], audit)
        found = {name for name, code in answers.items() if code == 0}
        missing = [t for t in specs if t.name not in found]
        if missing:
            response = await admin.create_topics(
                [NewTopic(t.name, t.partitions, t.replicas, topic_configs=t.config) for t in missing]
            )
            for name, code, message in response.topic_errors:
                if code == _TOPIC_ALREADY_EXISTS:
                    continue
                if code in _REFUSED:
                    raise refused(s, "Create", f"topic {name}", f"{_REFUSED[code]} ({message})", audit)
                if code:
                    raise RuntimeError(f"cannot create topic {name}: error {code} {message}")
                log.info("created topic %s", name)
    finally:
        await admin.close()
    if not await wait_until_served(s, [t.name for t in specs]):
        raise RuntimeError(f"the brokers do not serve the topics {[t.name for t in specs]} yet")

