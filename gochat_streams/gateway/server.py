"""The aiohttp gateway: ``create_app(settings)`` and ``run(settings)``.

A client connects to ``/ws`` with a token (``Authorization: Bearer`` or ``?token=``),
sends ``{"type": "send", "message": {...}}`` frames and receives ``ack``, ``message``
and ``error`` frames. The gateway produces to ``im-upstream-topic`` keyed by sender,
publishes the user's presence to ``im-user-topic``, and pushes what arrives on its own
``im-downstream-topic-{gateway_id}`` to the recipient's sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import uuid
from collections.abc import AsyncIterator

from aiohttp import WSCloseCode, WSMsgType, web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from .. import topics
from ..codecs import DecodeError, decode_client_frame, decode_downstream, encode
from ..kafka import client_kwargs, producer_kwargs
from ..metrics import reject
from ..models import ErrorCode, PresenceChange, UpstreamMessage, now_ms
from ..settings import Settings
from .hub import Hub
from .tokens import InvalidToken, verify_token

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
HUB = web.AppKey("hub", Hub)
PRODUCER = web.AppKey("producer", AIOKafkaProducer)
#: Set once the downstream consumer has its partitions and positions: before that,
#: with ``auto.offset.reset=latest``, a message for a new socket could be skipped.
READY = web.AppKey("ready", asyncio.Event)

_ERROR_CODES: dict[str, ErrorCode] = {
    "malformed_json": "malformed_json",
    "unknown_type": "unknown_type",
    "oversize": "frame_too_large",
}


def create_app(settings: Settings) -> web.Application:
    app = web.Application()
    app[SETTINGS] = settings
    app[HUB] = Hub()
    app[READY] = asyncio.Event()
    app.cleanup_ctx.append(_kafka_clients)
    app.on_shutdown.append(_close_sockets)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/healthz", health)
    app.router.add_get("/", demo_page)
    return app


async def _kafka_clients(app: web.Application) -> AsyncIterator[None]:
    s = app[SETTINGS]
    await topics.ensure_topics(s, [*topics.core(s), topics.downstream(s, s.gateway_id)])
    producer = AIOKafkaProducer(**producer_kwargs(s))
    await producer.start()
    app[PRODUCER] = producer
    consumer = asyncio.create_task(_consume_downstream(app), name="downstream-consumer")
    yield
    consumer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await consumer
    await producer.stop()


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
        **client_kwargs(s),
    )
    await consumer.start()
    hub, ready = app[HUB], app[READY]
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=200)
            if not ready.is_set() and consumer.assignment():
                for tp in consumer.assignment():
                    await consumer.position(tp)
                ready.set()
                log.info("gateway %s ready: consuming %s", s.gateway_id, sorted(consumer.assignment()))
            for records in batches.values():
                for record in records:
                    await _push(hub, record.value)
    finally:
        await consumer.stop()


async def _push(hub: Hub, raw: bytes) -> None:
    try:
        message = decode_downstream(raw)
    except DecodeError as exc:
        reject("downstream", exc.reason, exc.detail)
        return
    if message.to_user_id is None:
        reject("downstream", "missing_field", f"{message.message_id}: no to_user_id")
        return
    # The record is already the downstream JSON: wrap it rather than re-serialise it.
    await hub.push(message.to_user_id, '{"type":"message","message":' + raw.decode() + "}")


async def _close_sockets(app: web.Application) -> None:
    for ws in app[HUB].all_sockets():
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"gateway shutting down")


def _token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header[len("Bearer "):].strip()
    return request.query.get("token")


async def _publish_presence(app: web.Application, user_id: str, connection_id: str, online: bool) -> None:
    s = app[SETTINGS]
    change = PresenceChange(
        user_id=user_id, gateway_id=s.gateway_id, connection_id=connection_id, online=online, timestamp=now_ms()
    )
    await app[PRODUCER].send_and_wait(topics.user(s).name, key=user_id.encode(), value=encode(change))


async def websocket(request: web.Request) -> web.WebSocketResponse:
    app = request.app
    s = app[SETTINGS]
    if not app[READY].is_set():
        raise web.HTTPServiceUnavailable(text="gateway is starting")
    token = _token(request)
    if not token:
        raise web.HTTPUnauthorized(text="missing token")
    try:
        user_id = verify_token(token, s.auth_secret.get_secret_value())
    except InvalidToken as exc:
        raise web.HTTPUnauthorized(text=str(exc)) from None

    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=4 * s.max_frame_bytes)
    await ws.prepare(request)
    connection_id = uuid.uuid4().hex
    hub = app[HUB]
    hub.add(user_id, ws)
    try:
        await _publish_presence(app, user_id, connection_id, online=True)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await _on_frame(app, ws, user_id, msg.data)
            elif msg.type == WSMsgType.BINARY:
                await _error(ws, "invalid_frame", "frames are JSON text")
    finally:
        hub.remove(user_id, ws)
        with contextlib.suppress(KafkaError, asyncio.CancelledError):
            await asyncio.shield(_publish_presence(app, user_id, connection_id, online=False))
    return ws


async def _error(ws: web.WebSocketResponse, code: ErrorCode, detail: str, message_id: str | None = None) -> None:
    reject("gateway", code, detail)
    await ws.send_json({"type": "error", "code": code, "detail": detail, "message_id": message_id})


async def _on_frame(app: web.Application, ws: web.WebSocketResponse, user_id: str, data: str) -> None:
    s = app[SETTINGS]
    try:
        frame = decode_client_frame(data, max_bytes=s.max_frame_bytes)
    except DecodeError as exc:
        await _error(ws, _ERROR_CODES.get(exc.reason, "invalid_frame"), exc.detail)
        return
    message = frame.message
    if message.from_user_id is not None and message.from_user_id != user_id:
        await _error(ws, "sender_mismatch", "from_user_id is not the authenticated user", message.message_id)
        return
    if len(message.content) > s.max_content_chars:
        await _error(ws, "content_too_large", f"content is limited to {s.max_content_chars} characters",
                     message.message_id)
        return
    upstream = UpstreamMessage(
        message_id=message.message_id,
        from_user_id=user_id,
        to_user_id=message.to_user_id,
        conversation_id=message.conversation_id,
        content=message.content,
        message_type=message.message_type,
        metadata=message.metadata,
        gateway_id=s.gateway_id,
        timestamp=message.timestamp if message.timestamp is not None else now_ms(),
    )
    try:
        await app[PRODUCER].send_and_wait(topics.upstream(s).name, key=user_id.encode(), value=encode(upstream))
    except KafkaError as exc:
        await _error(ws, "broker_unavailable", f"message not accepted: {exc}", message.message_id)
        return
    await ws.send_json({"type": "ack", "message_id": message.message_id})


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
    # force: the Faust CLI that runs this command has already configured logging.
    logging.basicConfig(
        level=settings.log_level, force=True,
        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s",
    )
    runner = web.AppRunner(create_app(settings))
    await runner.setup()
    site = web.TCPSite(runner, settings.gateway_host, settings.gateway_port)
    await site.start()
    log.info("gateway %s listening on http://%s:%s", settings.gateway_id, settings.gateway_host, settings.gateway_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
