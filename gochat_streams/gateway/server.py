"""The aiohttp gateway: ``create_app(settings)`` and ``run(settings)``.

A client connects to ``/ws`` with a token (``Authorization: Bearer`` or a subprotocol: auth.py),
sends ``{"type": "send", "message": {...}}`` and ``{"type": "ack", "message_id": ...}``
frames and receives ``ack``, ``message`` and ``error`` frames. The gateway produces to
``im-upstream-topic`` keyed by sender, publishes the user's presence and
acknowledgements to ``im-user-topic``, and pushes what arrives on its own
``im-downstream-topic-{gateway_id}`` to the recipient's sockets (headers: topics.py),
through each socket's send queue (hub.py), so that no socket holds up another.
``GET /history`` (history.py) serves a conversation's recent messages to its members.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator

from aiohttp import WSCloseCode, WSMsgType, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from .. import topics
from ..codecs import (DecodeError, decode_client_frame, decode_downstream, decode_recipients, decode_refusal,
                      encode)
from ..alerting import Alerting, Observations
from ..audit import AuditLog, producer_send
from ..compat.aiokafka import drain_whole_nodes, track_topic
from ..content_crypto import ContentKeysMissing, UnopenedContent, content_keyring, max_sealed_chars, open_message, seal
from ..metrics import content_undecryptable
from ..conversations import single_chat_id
from ..deadletters import buried, dead_letter, retrying
from ..kafka import consumer_kwargs, is_refusal, producer_kwargs, refused
from ..metrics import count_consumed, e2e_latency, gateway_connections, messages_deduplicated, reject, sockets_closed
from ..models import AckFrame, Acked, Bounce, ErrorCode, PresenceChange, SendFrame, UpstreamMessage, now_ms
from ..models.messages import USER_MESSAGE_TYPES
from ..monitor import publish_rule_alerts
from ..operator import check_operator
from ..routing import addressing_error
from ..serving import cancel_all, serve
from ..settings import Settings
from ..trace import hop
from .auth import PROTOCOL, RedactTokens, audit_refusals, offered_protocols, verified
from .history import history, history_clients
from .hub import Connection, Hub, SendLimits, TokenBucket
from .acks import AckForwarder
from .keys import ACKS, AUDIT, CONTENT_KEYS, HUB, KEYRING, LATENCIES, PRODUCER, READY, SETTINGS, UNSENT
from .tls import tls_context
from .tokens import InsecureKeyring, keyring

log = logging.getLogger(__name__)

_TOKEN_EXPIRED = json.dumps({"type": "error", "code": "token_expired",
                             "detail": "the token expired: connect again with a new one", "message_id": None})

_ERROR_CODES: dict[str, ErrorCode] = {
    "malformed_json": "malformed_json",
    "unknown_type": "unknown_type",
    "oversize": "frame_too_large",
}


def create_app(settings: Settings) -> web.Application:
    """The gateway app; :class:`tokens.InsecureKeyring` if its token keys must not be run with,
    :class:`ContentKeysMissing` if it has no content keys and encryption is not turned off."""
    audit = AuditLog("gateway", buffer_max=settings.audit_buffer_max)
    app = web.Application(middlewares=[audit_refusals(audit)])
    app[SETTINGS] = settings
    app[AUDIT] = audit
    app[KEYRING] = keyring(settings)
    app[CONTENT_KEYS] = content_keyring(settings)
    app[HUB] = Hub(settings.max_sockets_per_user)
    app[READY] = asyncio.Event()
    app[UNSENT] = asyncio.Semaphore(settings.max_unsent)
    app[LATENCIES] = Observations(settings.alert_thresholds())
    app.cleanup_ctx.append(history_clients)
    app.cleanup_ctx.append(_kafka_clients)
    app.on_shutdown.append(_close_sockets)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/history", history)
    app.router.add_get("/healthz", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", demo_page)
    return app


async def _kafka_clients(app: web.Application) -> AsyncIterator[None]:
    s = app[SETTINGS]
    await topics.ensure_topics(s, topics.gateway_topics(s, s.gateway_id), app[AUDIT])
    producer = drain_whole_nodes(AIOKafkaProducer(**producer_kwargs(s)))
    await producer.start()
    for topic in (topics.upstream(s).name, topics.user(s).name, topics.upstream_dlq(s).name, topics.alert(s).name):
        track_topic(producer, topic)
    app[PRODUCER] = producer
    app[ACKS] = AckForwarder(producer, topics.user(s).name, s.user_partitions)
    track_topic(producer, topics.audit(s).name)
    app[AUDIT].start(producer_send(producer, topics.audit(s).name))
    tasks = [asyncio.create_task(_consume_downstream(app), name="downstream-consumer"),
             asyncio.create_task(_alert_on_latency(app), name="latency-alert")]
    yield
    await cancel_all(tasks)
    await app[ACKS].close()
    await app[AUDIT].close()
    await producer.stop()


async def _alert_on_latency(app: web.Application) -> None:
    """The spec's e2e latency rule, on what this gateway measured (monitor.py has the others)."""
    s = app[SETTINGS]
    alerting = Alerting(s.alert_thresholds())
    while True:
        await asyncio.sleep(s.monitor_interval_s)
        changes = alerting.evaluate(app[LATENCIES], time.time())
        try:
            await publish_rule_alerts(app[PRODUCER], s, "gateway", changes, {"gateway": s.gateway_id})
        except KafkaError:
            log.exception("latency alert not published")


async def _consume_downstream(app: web.Application) -> None:
    s = app[SETTINGS]
    group = topics.gateway_group(s, s.gateway_id)
    consumer = AIOKafkaConsumer(
        topics.downstream_name(s, s.gateway_id),
        group_id=group.group_id,
        auto_offset_reset=group.auto_offset_reset,
        enable_auto_commit=group.enable_auto_commit,
        max_poll_records=group.max_poll_records,
        session_timeout_ms=group.session_timeout_ms,
        heartbeat_interval_ms=group.heartbeat_interval_ms,
        **consumer_kwargs(s),
    )
    ready = app[READY]
    try:
        await consumer.start()
        while True:
            batches = await consumer.getmany(timeout_ms=200)
            if not ready.is_set() and consumer.assignment():
                for tp in consumer.assignment():
                    await consumer.position(tp)
                ready.set()
                log.info("gateway %s ready: consuming %s", s.gateway_id, sorted(consumer.assignment()))
            for tp, records in batches.items():
                count_consumed("gateway", tp.topic, s.namespace, len(records))
                for record in records:
                    await _handle_downstream(app, record)
    except KafkaError as exc:
        if not is_refusal(exc):
            raise
        # This gateway may not read its topic or use its group: it stays not ready (/healthz 503).
        raise refused(s, "Read", f"topic {topics.downstream_name(s, s.gateway_id)} in group {group.group_id}",
                      exc, app[AUDIT]) from exc
    finally:
        await consumer.stop()


class _BadRecord(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


async def _handle_downstream(app: web.Application, record: ConsumerRecord) -> None:
    """Push a record, retrying a failure; what cannot be pushed is dead-lettered, and the next record follows."""
    s = app[SETTINGS]
    retry_count = 0
    try:
        try:
            failure = await retrying(lambda: _on_downstream(app, record), attempts=s.max_attempts,
                                     backoff_s=s.retry_backoff_s, what=f"pushing {record.topic}@{record.offset}",
                                     service="gateway", not_retried=(_BadRecord,))
        except _BadRecord as exc:
            reason, detail = exc.reason, str(exc)
        else:
            if failure is None:
                return
            reason, detail, retry_count = "processing_error", repr(failure), s.max_attempts
        await _bury(app, record, reason, detail, retry_count)
    except Exception:  # the consumer must outlive any one record; the inbox keeps the message
        log.exception("downstream record %s[%s]@%s dropped", record.topic, record.partition, record.offset)


async def _bury(app: web.Application, record: ConsumerRecord, reason: str, detail: str, retry_count: int) -> None:
    s = app[SETTINGS]
    key = record.key.decode(errors="replace") if record.key is not None else None
    letter, alert = dead_letter("gateway", "downstream", record.topic, record.partition, record.offset, key,
                                record.value or b"", reason, detail, retry_count)
    producer = app[PRODUCER]
    await producer.send_and_wait(topics.upstream_dlq(s).name, key=record.key, value=encode(letter))
    await producer.send_and_wait(topics.alert(s).name, key=reason.encode(), value=encode(alert))
    buried(letter, topics.UPSTREAM_DLQ)


async def _on_downstream(app: web.Application, record: ConsumerRecord) -> None:
    """Queue one downstream record for the sockets its key and headers name (never waits for a socket)."""
    headers = dict(record.headers)
    if not record.key or not record.value:
        raise _BadRecord("missing_field", "record without key or value")
    user_id = record.key.decode(errors="replace")
    if headers.get(topics.DOWNSTREAM_KIND) == b"error":
        _push_refusal(app[HUB], user_id, record.value)
        return
    try:
        message = decode_downstream(record.value)
    except DecodeError as exc:
        raise _BadRecord(exc.reason, exc.detail) from None
    recipients = _recipients(headers)
    try:
        opened = open_message(app[CONTENT_KEYS], message)
    except UnopenedContent as exc:
        # Dead-lettered as it came (sealed); the entry stays in the user's inbox.
        content_undecryptable.labels("gateway", exc.reason).inc()
        raise _BadRecord("undecryptable", exc.detail) from None
    if opened is message:  # clear: the record is already the downstream JSON, wrapped rather than re-serialised
        frame = '{"type":"message","message":' + record.value.decode() + "}"
    else:
        frame = json.dumps({"type": "message", "message": opened.model_dump(mode="json")}, ensure_ascii=False)
    hub = app[HUB]
    target = headers.get(topics.DOWNSTREAM_CONNECTION)
    if target is not None:
        # Reconnect sync, for the socket that connected; if it is gone, the entry stays pending.
        for user_id, seq in (recipients or {}).items():
            if (conn := hub.connection(user_id, target.decode())) is not None:
                conn.push(frame, message.from_user_id, message.message_id, seq, sync=True)
                _traced(record, message.message_id, "sync", user_id)
        return
    if recipients is None:
        # An echo of the user's own message: for their other sockets, not the sender's.
        for conn in hub.connections(user_id):
            if not conn.sent(message.message_id):
                conn.push(frame, message.from_user_id, message.message_id, None)
        return
    checked_at = now_ms()
    for user_id, seq in recipients.items():
        pushed = [conn.push(frame, message.from_user_id, message.message_id, seq) for conn in hub.connections(user_id)]
        if not any(pushed):
            await _bounce(app, user_id, message.message_id, seq, checked_at)
            continue
        latency_ms = max(0, now_ms() - message.timestamp)
        e2e_latency.labels(app[SETTINGS].gateway_id).observe(latency_ms / 1000)
        app[LATENCIES].latency(latency_ms / 1000, time.time())
        _traced(record, message.message_id, "live", user_id, e2e_ms=latency_ms)


def _recipients(headers: dict[str, bytes]) -> dict[str, int] | None:
    """The record's users and their inbox sequence numbers (topics.DOWNSTREAM_RECIPIENTS), if it names them."""
    raw = headers.get(topics.DOWNSTREAM_RECIPIENTS)
    if raw is None:
        return None
    try:
        return decode_recipients(raw)
    except DecodeError as exc:
        raise _BadRecord(exc.reason, f"{topics.DOWNSTREAM_RECIPIENTS}: {exc.detail}") from None


def _traced(record: ConsumerRecord, message_id: str, kind: str, user_id: str, **extra: object) -> None:
    hop("gateway_out", message_id, topic=record.topic, partition=record.partition, offset=record.offset,
        kind=kind, user_id=user_id, **extra)


async def _bounce(app: web.Application, user_id: str, message_id: str, seq: int, checked_at: int) -> None:
    """The logic service routed a message here for a user this gateway does not hold.

    Not waited for: a user who just went (a socket closed for not reading, say) bounces every
    message already routed here, and a broker round trip for each would hold up every other
    user's delivery. Its order with this gateway's presence changes is the producer's, per
    partition; if it is lost, the message is still in the inbox and the disconnect follows.
    """
    s = app[SETTINGS]
    bounce = Bounce(user_id=user_id, gateway_id=s.gateway_id, message_id=message_id, seq=seq, timestamp=checked_at)
    log.info("no socket of %s here for %s: bounced", user_id, message_id)
    sent = await app[PRODUCER].send(topics.user(s).name, key=user_id.encode(), value=encode(bounce))
    sent.add_done_callback(_bounce_sent)


def _bounce_sent(sent: asyncio.Future) -> None:
    if not sent.cancelled() and sent.exception() is not None:
        log.warning("bounce not produced: %r", sent.exception())


def _push_refusal(hub: Hub, user_id: str, raw: bytes) -> None:
    try:
        refusal = decode_refusal(raw)
    except DecodeError as exc:
        raise _BadRecord(exc.reason, exc.detail) from None
    frame = json.dumps({"type": "error", "code": refusal.code, "detail": refusal.detail,
                        "message_id": refusal.message_id})
    connections = hub.connections(user_id)
    senders = [conn for conn in connections if conn.sent(refusal.message_id)]
    for conn in senders or connections:
        conn.enqueue(frame)


async def _close_sockets(app: web.Application) -> None:
    await asyncio.gather(*(conn.close_socket(WSCloseCode.GOING_AWAY, "gateway shutting down")
                           for conn in app[HUB].all_connections()))


async def _publish_presence(app: web.Application, user_id: str, connection_id: str, online: bool) -> None:
    s = app[SETTINGS]
    change = PresenceChange(
        user_id=user_id, gateway_id=s.gateway_id, connection_id=connection_id, online=online, timestamp=now_ms()
    )
    await app[ACKS].written(user_id)  # a connect after acks must not sync what they acknowledged
    await app[PRODUCER].send_and_wait(topics.user(s).name, key=user_id.encode(), value=encode(change))


async def websocket(request: web.Request) -> web.WebSocketResponse:
    app = request.app
    s = app[SETTINGS]
    if not app[READY].is_set():
        raise web.HTTPServiceUnavailable(text="gateway is starting")
    claims = verified(request)
    protocols = offered_protocols(request)
    if protocols and PROTOCOL not in protocols:
        # Refused before aiohttp logs the offered protocols, a token among them.
        raise web.HTTPBadRequest(text=f"offer the {PROTOCOL!r} subprotocol")
    user_id = claims.user_id

    ws = web.WebSocketResponse(heartbeat=s.ws_heartbeat_s, max_msg_size=4 * s.max_frame_bytes, protocols=(PROTOCOL,))
    await ws.prepare(request)
    conn = Connection(user_id, uuid.uuid4().hex, ws, TokenBucket(s.max_frames_per_s, s.max_frames_burst),
                      SendLimits(s.ws_send_queue_max, s.inbox_max_pending, s.ws_send_timeout_s), request.transport)
    app[AUDIT].record(user_id, "login", "/ws", "success", request.remote, connection_id=conn.connection_id,
                      expires_at=claims.expires_at)
    hub = app[HUB]
    writer = asyncio.create_task(conn.write(), name=f"writer-{conn.connection_id}")
    expiry = asyncio.get_running_loop().call_later(max(0.0, claims.expires_at - time.time()), conn.close,
                                                   "token_expired", _TOKEN_EXPIRED)
    # Registered before the presence change is published: the reconnect sync that
    # the change triggers finds the socket. Beyond the per-user limit, the oldest go.
    for oldest in hub.add(conn):
        oldest.close("socket_limit")
    gateway_connections.labels(s.gateway_id).set(hub.connection_count)
    try:
        await _publish_presence(app, user_id, conn.connection_id, online=True)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await _on_frame(app, conn, msg.data)
            elif msg.type == WSMsgType.BINARY:
                await _error(ws, "invalid_frame", "frames are JSON text")
    except ConnectionResetError:
        pass  # a reply to the client failed: it went away, or the gateway cut it off for not reading
    finally:
        expiry.cancel()
        hub.remove(conn)
        gateway_connections.labels(s.gateway_id).set(hub.connection_count)
        if conn.closing is not None:
            sockets_closed.labels(s.gateway_id, conn.closing).inc()
        with contextlib.suppress(KafkaError, asyncio.CancelledError):
            await asyncio.shield(_publish_presence(app, user_id, conn.connection_id, online=False))
        await cancel_all([writer])
    return ws


async def _error(ws: web.WebSocketResponse, code: ErrorCode, detail: str, message_id: str | None = None) -> None:
    await ws.send_str(_error_frame(code, detail, message_id))


def _error_frame(code: ErrorCode, detail: str, message_id: str | None) -> str:
    reject("gateway", code, detail)
    return json.dumps({"type": "error", "code": code, "detail": detail, "message_id": message_id})


async def _on_frame(app: web.Application, conn: Connection, data: str) -> None:
    """One client frame. Acks of what this socket was pushed are not rate-limited.

    A client acks every message it gets, so after a long absence its reconnect sync
    alone would use up the bucket; those acks are bounded by what the gateway pushed.
    Everything else (sends, bad frames, acks of nothing) takes a token.
    """
    s = app[SETTINGS]
    try:
        frame = decode_client_frame(data, max_bytes=s.max_frame_bytes)
    except DecodeError as exc:
        if conn.frames.take():
            await _error(conn.ws, _ERROR_CODES.get(exc.reason, "invalid_frame"), exc.detail)
        return
    if isinstance(frame, AckFrame) and frame.message_id in conn.unacked:
        await _on_ack(app, conn, frame)
    elif not conn.frames.take():
        message_id = frame.message_id if isinstance(frame, AckFrame) else frame.message.message_id
        await _error(conn.ws, "rate_limited", f"at most {s.max_frames_per_s:g} frames a second; frame dropped",
                     message_id)
    elif isinstance(frame, SendFrame):
        await _on_send(app, conn, frame)


async def _on_ack(app: web.Application, conn: Connection, frame: AckFrame) -> None:
    """Forward the acknowledgement of a message pushed to this socket to the user's inbox."""
    seq = conn.unacked.pop(frame.message_id)
    written = app[ACKS].forward(Acked(user_id=conn.user_id, message_id=frame.message_id, seq=seq))
    written.add_done_callback(functools.partial(_ack_written, conn, frame.message_id, seq))


def _ack_written(conn: Connection, message_id: str, seq: int, written: asyncio.Future[None]) -> None:
    if written.cancelled() or (exc := written.exception()) is None:
        return
    # Not acknowledged: the message comes again on the next connect.
    conn.unacked[message_id] = seq
    conn.enqueue(_error_frame("broker_unavailable", f"ack not recorded: {exc}", message_id))


async def _on_send(app: web.Application, conn: Connection, frame: SendFrame) -> None:
    s = app[SETTINGS]
    ws, user_id, message = conn.ws, conn.user_id, frame.message
    if message.from_user_id is not None and message.from_user_id != user_id:
        await _error(ws, "sender_mismatch", "from_user_id is not the authenticated user", message.message_id)
        return
    if len(message.content) > s.max_content_chars:
        await _error(ws, "content_too_large", f"content is limited to {s.max_content_chars} characters",
                     message.message_id)
        return
    # A single chat's conversation is its two users': what the client named is not trusted.
    if message.to_user_id is not None:
        conversation_id = single_chat_id(user_id, message.to_user_id)
    elif message.conversation_id is not None:
        conversation_id = message.conversation_id
    else:
        await _error(ws, "invalid_frame", "a message without to_user_id needs the group's conversation_id",
                     message.message_id)
        return
    upstream = UpstreamMessage(
        message_id=message.message_id,
        from_user_id=user_id,
        to_user_id=message.to_user_id,
        conversation_id=conversation_id,
        # A system message's text is the logic service's, written from ids (conversations.py):
        # the client's is dropped here rather than carried in clear.
        content=message.content if message.message_type in USER_MESSAGE_TYPES else "",
        message_type=message.message_type,
        metadata=message.metadata,
        gateway_id=s.gateway_id,
        timestamp=message.timestamp if message.timestamp is not None else now_ms(),
    )
    if (error := addressing_error(upstream)) is not None:
        await _error(ws, "invalid_frame", error, message.message_id)
        return
    if conn.sent_within(message.message_id, s.resend_window_s):
        # A client resending what it has no ack for yet: the broker has it, say so again.
        messages_deduplicated.labels("gateway").inc()
        await ws.send_json({"type": "ack", "message_id": message.message_id})
        return
    unsent = app[UNSENT]
    if unsent.locked():
        await _error(ws, "broker_unavailable", f"{s.max_unsent} messages are waiting for the broker; try again",
                     message.message_id)
        return
    # Sealed here, the last hop that must read it: Kafka, the store and the caches hold ciphertext.
    upstream = seal(app[CONTENT_KEYS], upstream)
    if len(upstream.content) > max_sealed_chars(s):  # the logic service would dead-letter it
        await _error(ws, "content_too_large", "content and metadata are too large", message.message_id)
        return
    conn.remember_sent(message.message_id)
    try:
        async with unsent:
            started = time.perf_counter()
            send = app[PRODUCER].send_and_wait(topics.upstream(s).name, key=user_id.encode(), value=encode(upstream))
            sent = await asyncio.wait_for(send, s.send_timeout_s)
    except (KafkaError, TimeoutError) as exc:
        # The client may resend; if the broker took this one after all, the logic
        # service's dedup drops the copy.
        conn.forget_sent(message.message_id)
        if is_refusal(exc):
            refused(s, "Write", f"topic {topics.upstream(s).name}", exc, app[AUDIT])
        await _error(ws, "broker_unavailable", f"message not accepted: {exc!r}", message.message_id)
        return
    hop("gateway_in", message.message_id, topic=sent.topic, partition=sent.partition, offset=sent.offset,
        started=started, from_user_id=user_id)
    await ws.send_json({"type": "ack", "message_id": message.message_id})


async def metrics(request: web.Request) -> web.Response:
    check_operator(request, request.app[SETTINGS])
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def health(request: web.Request) -> web.Response:
    app = request.app
    ready = app[READY].is_set()
    return web.json_response(
        {"gateway_id": app[SETTINGS].gateway_id, "ready": ready, "connections": app[HUB].connection_count},
        status=200 if ready else 503,
    )


async def demo_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(request.app[SETTINGS].web_dir / "chat.html")


async def run(settings: Settings) -> None:
    """Serve until SIGINT or SIGTERM, then close sockets and Kafka clients."""
    try:
        app = create_app(settings)
        ssl_context = tls_context(settings)
    except (InsecureKeyring, ContentKeysMissing, ValueError, OSError) as exc:
        raise SystemExit(f"gateway not started: {exc}") from None
    logging.getLogger("aiohttp.access").addFilter(RedactTokens())
    await serve(app, settings, settings.gateway_host, settings.gateway_port,
                f"gateway {settings.gateway_id}", ssl_context)
