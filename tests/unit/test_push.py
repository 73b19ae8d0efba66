"""Offline pushers against a real file and a real HTTP server on loopback."""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gochat_streams.content_crypto import ContentKeyring, ContentKeysMissing, new_key, seal
from gochat_streams.devstack import free_port
from gochat_streams.metrics import content_undecryptable
from gochat_streams.models import OfflinePushPayload, UpstreamMessage
from gochat_streams.routing import offline_push_task
from gochat_streams.push import OutboxPusher, PushFailed, WebhookPusher, create_pusher
from gochat_streams.settings import Settings

EXAMPLES = json.loads((Path(__file__).parent / "spec_examples.json").read_text())
NOTICE = OfflinePushPayload.model_validate(EXAMPLES["offline_push"]["payload"])


def notice(n: int) -> OfflinePushPayload:
    return NOTICE.model_copy(update={"message_id": f"msg_{n}"})


async def test_outbox_appends_one_line_per_push_in_order(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "outbox.jsonl"
    pusher = OutboxPusher(path)
    before = int(time.time() * 1000)
    await pusher.push(NOTICE)
    await asyncio.gather(*(pusher.push(notice(n)) for n in range(50)))
    await pusher.close()

    text = path.read_text(encoding="utf-8")
    assert "新消息" in text and "John: Hello World" in text  # ensure_ascii=False
    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["message_id"] for line in lines] == ["msg_123"] + [f"msg_{n}" for n in range(50)]
    first = lines[0]
    assert first.pop("pushed_at") >= before
    assert first == {"user_id": "user_456", "message_id": "msg_123", "title": "新消息",
                     "content": "John: Hello World", "push_type": "message"}


async def test_outbox_logs_each_push(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="gochat_streams.push")
    await OutboxPusher(tmp_path / "outbox.jsonl").push(NOTICE)
    assert "user_456" in caplog.text and "msg_123" in caplog.text


async def serve(handler: Any) -> TestServer:
    app = web.Application()
    app.router.add_post("/push", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


@pytest.fixture
async def received() -> AsyncIterator[tuple[str, list[Any]]]:
    bodies: list[Any] = []

    async def handler(request: web.Request) -> web.Response:
        bodies.append(await request.json())
        return web.Response(status=204)

    server = await serve(handler)
    yield str(server.make_url("/push")), bodies
    await server.close()


async def _webhook_push(url: str, keys: Any, notice: Any) -> None:
    pusher = WebhookPusher(url, timeout_s=5, keys=keys)
    try:
        await pusher.push(notice)
    finally:
        await pusher.close()


async def test_webhook_posts_the_notice_once(received: tuple[str, list[Any]]) -> None:
    url, bodies = received
    await _webhook_push(url, None, NOTICE)
    assert bodies == [EXAMPLES["offline_push"]["payload"]]


async def test_webhook_error_status_fails() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=500, text="boom")

    server = await serve(handler)
    pusher = WebhookPusher(str(server.make_url("/push")), timeout_s=5, keys=None)
    try:
        with pytest.raises(PushFailed, match="500"):
            await pusher.push(NOTICE)
    finally:
        await pusher.close()
        await server.close()


async def test_webhook_slower_than_the_timeout_fails() -> None:
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(status=204)

    server = await serve(handler)
    pusher = WebhookPusher(str(server.make_url("/push")), timeout_s=0.2, keys=None)
    try:
        with pytest.raises(PushFailed, match="within 0.2s"):
            await pusher.push(NOTICE)
    finally:
        release.set()
        await pusher.close()
        await server.close()


async def test_webhook_unreachable_fails() -> None:
    pusher = WebhookPusher(f"http://127.0.0.1:{free_port()}/push", timeout_s=5, keys=None)
    try:
        with pytest.raises(PushFailed, match="127.0.0.1"):
            await pusher.push(NOTICE)
    finally:
        await pusher.close()


def test_create_pusher_picks_webhook_when_a_url_is_set() -> None:
    pusher = create_pusher(Settings(push_webhook_url="http://127.0.0.1:9/push", push_timeout_s=2.5,
                                    content_keys={"k1": new_key()}))
    assert isinstance(pusher, WebhookPusher) and pusher.keys.current == "k1"
    assert pusher.url == "http://127.0.0.1:9/push" and pusher.timeout.total == 2.5


def test_create_pusher_defaults_to_the_outbox(tmp_path: Path) -> None:
    pusher = create_pusher(Settings(data_dir=tmp_path, push_webhook_url=None, push_outbox=None))
    assert isinstance(pusher, OutboxPusher) and pusher.path == tmp_path / "push-outbox.jsonl"
    pusher = create_pusher(Settings(push_webhook_url=None, push_outbox=tmp_path / "x.jsonl"))
    assert isinstance(pusher, OutboxPusher) and pusher.path == tmp_path / "x.jsonl"


def test_a_webhook_needs_the_content_keys_unless_encryption_is_off() -> None:
    with pytest.raises(ContentKeysMissing):
        create_pusher(Settings(push_webhook_url="http://127.0.0.1:9/push"))
    assert create_pusher(Settings(push_webhook_url="http://127.0.0.1:9/push",
                                  content_encryption_disabled=True)).keys is None  # type: ignore[attr-defined]


RING = ContentKeyring({"k1": bytes(32)}, "k1")


def sealed_push(text: str, keys: ContentKeyring = RING) -> OfflinePushPayload:
    message = UpstreamMessage(message_id="m1", from_user_id="john", to_user_id="bob", conversation_id="bob:john",
                              timestamp=1, gateway_id="gw", message_type="text", content=text)
    return offline_push_task(seal(keys, message).to_downstream(), "bob").payload


async def test_a_sealed_text_is_opened_for_the_webhook_only(
        received: tuple[str, list[Any]], tmp_path: Path) -> None:
    notice = sealed_push("the password is swordfish")
    assert "swordfish" not in notice.model_dump_json()
    outbox = tmp_path / "outbox.jsonl"
    await OutboxPusher(outbox).push(notice)
    assert "swordfish" not in outbox.read_text() and notice.content in outbox.read_text()
    url, bodies = received
    await _webhook_push(url, RING, notice)
    assert bodies == [{"user_id": "bob", "message_id": "m1", "title": "新消息",
                       "content": "john: the password is swordfish", "push_type": "message"}]


async def test_a_sealed_text_under_an_unknown_key_fails_the_push_and_is_counted(
        received: tuple[str, list[Any]]) -> None:
    notice = sealed_push("hello", ContentKeyring({"gone": bytes(range(32))}, "gone"))
    before = content_undecryptable.labels("task", "unknown_key")._value.get()
    pusher = WebhookPusher(received[0], timeout_s=5, keys=RING)
    try:
        with pytest.raises(PushFailed, match="'gone', which is not in this keyring"):
            await pusher.push(notice)
    finally:
        await pusher.close()
    assert received[1] == []
    assert content_undecryptable.labels("task", "unknown_key")._value.get() == before + 1
