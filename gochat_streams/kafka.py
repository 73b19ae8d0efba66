"""Broker connection options, for plain aiokafka clients and for Faust alike; what a refusal says."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Collection, Iterable
from typing import Any, Protocol

import faust
from aiokafka import AIOKafkaClient, AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import create_conn
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.metadata import MetadataRequest

from .settings import Settings

log = logging.getLogger(__name__)


def _ssl_context(s: Settings) -> Any:
    if s.broker_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    return create_ssl_context(
        cafile=str(s.broker_ssl_cafile) if s.broker_ssl_cafile else None,
        certfile=str(s.broker_ssl_certfile) if s.broker_ssl_certfile else None,
        keyfile=str(s.broker_ssl_keyfile) if s.broker_ssl_keyfile else None,
    )


#: What the broker answers a principal that may not do what it asked.
AUTHORIZATION_ERRORS = (TopicAuthorizationFailedError, GroupAuthorizationFailedError, ClusterAuthorizationFailedError,
                        TransactionalIdAuthorizationFailed)


class Recorder(Protocol):
    """An audit log (audit.py: AuditLog.record)."""

    def record(self, actor: str | None, action: str, target: str, outcome: Any, source: str | None,
               **details: Any) -> object: ...


class BrokerRefused(RuntimeError):
    """The broker refused this process an operation: not a failure that retrying mends."""


def principal(s: Settings) -> str:
    """Who the broker takes this process for."""
    if s.broker_security_protocol.startswith("SASL") and s.broker_sasl_username:
        return f"User:{s.broker_sasl_username}"
    return "User:ANONYMOUS"


def refused(s: Settings, operation: str, resource: str, reason: object, audit: Recorder | None = None) -> BrokerRefused:
    """Log that the broker refused ``operation`` on ``resource`` (``topic X``, ``group G``), and
    record it in ``audit``; the exception to raise. The line names the principal, never a password."""
    why = f"{type(reason).__name__}: {reason}" if isinstance(reason, BaseException) else str(reason)
    error = BrokerRefused(f"BROKER REFUSED {principal(s)} {operation} on {resource}: {why}")
    log.error("%s", error)
    if audit is not None:
        audit.record(principal(s), "broker.refused", resource, "denied", f"broker:{s.broker_url.split('://')[-1]}",
                     operation=operation, reason=why)
    return error


def is_refusal(exc: BaseException) -> bool:
    return isinstance(exc, AUTHORIZATION_ERRORS)


def refused_resource(exc: BaseException) -> str:
    """What an aiokafka refusal (:data:`AUTHORIZATION_ERRORS`) names: ``topic X`` (X a name or
    names), ``group G``, ``transactional id T``, or ``cluster``."""
    if isinstance(exc, ClusterAuthorizationFailedError):
        return "cluster"
    names = exc.args[0] if exc.args else "?"
    names = ", ".join(sorted(names)) if isinstance(names, (set, frozenset, list, tuple)) else str(names)
    kinds = {GroupAuthorizationFailedError: "group", TransactionalIdAuthorizationFailed: "transactional id"}
    return f"{kinds.get(type(exc), 'topic')} {names}"


async def login_refusal(s: Settings) -> BaseException | None:
    """Why the first bootstrap server refuses this process's login (SASL or TLS), if it does.

    aiokafka reports only "unable to bootstrap" when every server refused: one connection
    made here gives the reason.
    """
    host, _, port = s.bootstrap_servers[0].rpartition(":")
    kwargs = {k: v for k, v in client_kwargs(s).items() if k != "bootstrap_servers"}
    try:
        conn = await create_conn(host, int(port), request_timeout_ms=5000, **kwargs)
    except (SaslAuthenticationFailed, ssl.SSLError) as exc:
        return exc
    except (KafkaError, OSError):
        return None
    await conn.close()
    return None


async def start_client(s: Settings, client: Any, audit: Recorder | None = None) -> None:
    """``client.start()``, saying so clearly when the broker refuses this process's login."""
    try:
        await client.start()
    except KafkaError:
        if (reason := await login_refusal(s)) is not None:
            raise refused(s, "authentication", f"broker {s.bootstrap_servers[0]}", reason, audit) from None
        raise


def client_kwargs(s: Settings) -> dict[str, Any]:
    """Keyword arguments every aiokafka client of ours takes: servers, TLS, SASL."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": s.bootstrap_servers,
        "security_protocol": s.broker_security_protocol,
    }
    if (ctx := _ssl_context(s)) is not None:
        kwargs["ssl_context"] = ctx
    if s.broker_security_protocol.startswith("SASL"):
        kwargs["sasl_mechanism"] = s.broker_sasl_mechanism
        kwargs["sasl_plain_username"] = s.broker_sasl_username
        kwargs["sasl_plain_password"] = sasl_password(s)
    return kwargs


def sasl_password(s: Settings) -> str | None:
    """The SASL password: ``GOCHAT_BROKER_SASL_PASSWORD``, or the first line of ``..._PASSWORD_FILE``."""
    if s.broker_sasl_password is not None:
        return s.broker_sasl_password.get_secret_value()
    if s.broker_sasl_password_file is not None:
        return s.broker_sasl_password_file.read_text().splitlines()[0].strip()
    return None


def producer_kwargs(s: Settings) -> dict[str, Any]:
    """acks=all, idempotent, with the spec's compression; aiokafka sends one batch per
    partition at a time."""
    return {
        **client_kwargs(s),
        "acks": "all",
        "enable_idempotence": True,
        "compression_type": None if s.compression == "none" else s.compression,
        "linger_ms": s.producer_linger_ms,
        "max_request_size": s.producer_max_request_bytes,
        "max_batch_size": s.producer_max_batch_bytes,
    }


def consumer_kwargs(s: Settings) -> dict[str, Any]:
    """What a consumer on the message path takes: :func:`client_kwargs` and the fetch wait."""
    return {**client_kwargs(s), "fetch_max_wait_ms": s.fetch_max_wait_ms}


async def topic_partitions(admin: AIOKafkaAdminClient) -> dict[str, list[int]]:
    """Each topic's partition numbers, as the broker's metadata has them now.

    Asks for every topic: naming one that does not exist would create it on a broker with
    ``auto.create.topics.enable``. Not a consumer's ``partitions_for_topic``: a consumer
    that assigns partitions itself tracks no topic, and ``topics()`` does not fill its
    client's metadata, so it knows no partition at all.
    """
    return {t["topic"]: sorted(p["partition"] for p in t["partitions"])
            for t in await admin.describe_topics() if t["error_code"] == 0}


async def partitions_of(s: Settings, names: Iterable[str]) -> list[TopicPartition]:
    """Every partition of the topics ``names``; none of a topic that does not exist."""
    admin = AIOKafkaAdminClient(**client_kwargs(s))
    await admin.start()
    try:
        found = await topic_partitions(admin)
    finally:
        await admin.close()
    return [TopicPartition(name, p) for name in names for p in found.get(name, ())]


async def served_topics(client: AIOKafkaClient, node_id: int, names: Collection[str]) -> dict[str, int]:
    """The partition count of each of the topics ``names`` that broker ``node_id`` knows
    with a leader for every partition."""
    response = await client.send(node_id, MetadataRequest(list(names), allow_auto_topic_creation=False))
    return {t["topic"]: len(t["partitions"]) for t in response.to_object()["topics"]
            if t["error_code"] == 0 and t["partitions"] and all(p["leader"] >= 0 for p in t["partitions"])}


async def wait_until_served(s: Settings, names: Collection[str], timeout_s: float = 30.0) -> bool:
    """Wait until every live broker's metadata has the topics ``names``, each partition led.

    Kafka applies a new topic to each broker's metadata after CreateTopics has answered:
    measured on a busy node, 30 of 200 new topics were missing from the next metadata
    request. A consumer group's leader that assigns in that moment gives the topic's
    partitions to nobody until its metadata is next refreshed, 5 minutes later. A broker
    that does not answer is skipped: it serves no metadata to anyone. False if some
    broker still lacked a topic after ``timeout_s``.
    """
    client = AIOKafkaClient(**client_kwargs(s))
    await client.bootstrap()
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        pending = {broker.nodeId for broker in client.cluster.brokers()}
        while True:
            for node_id in sorted(pending):
                try:
                    if set(names) <= set(await served_topics(client, node_id, names)):
                        pending.discard(node_id)
                except KafkaError:
                    pending.discard(node_id)
            if not pending:
                return True
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.05)
    finally:
        await client.close()


async def read_to_end(s: Settings, topic: str) -> list[Any]:
    """Every record of ``topic`` up to its end when called, ordered by (partition, offset)."""
    tps = await partitions_of(s, [topic])
    if not tps:
        return []
    # From the start: an offset reset, since a seek_to_beginning before the end_offsets
    # below can lose a race with the default reset to the end.
    consumer = AIOKafkaConsumer(**client_kwargs(s), group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        records: list[Any] = []
        while any([await consumer.position(tp) < end for tp, end in ends.items()]):
            for tp, batch in (await consumer.getmany(timeout_ms=1000)).items():
                records += [r for r in batch if r.offset < ends[tp]]
        return sorted(records, key=lambda r: (r.partition, r.offset))
    finally:
        await consumer.stop()


def faust_credentials(s: Settings) -> faust.types.auth.CredentialsT | None:
    """The same TLS/SASL options in Faust's terms."""
    ctx = _ssl_context(s)
    if s.broker_security_protocol.startswith("SASL"):
        password = sasl_password(s) or ""
        return faust.SASLCredentials(
            username=s.broker_sasl_username, password=password, ssl_context=ctx,
            mechanism=s.broker_sasl_mechanism,
        )
    if ctx is not None:
        return faust.SSLCredentials(ctx)
    return None
