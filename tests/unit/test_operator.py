import asyncio
import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request
from pydantic import SecretStr, ValidationError

from gochat_streams.audit import AuditLog
from gochat_streams.operator import (ListenRefused, check_listen, check_operator, is_loopback, operator_headers,
                                     operator_middleware)
from gochat_streams.settings import Settings

TOKEN = "operator-token-0123456789"


def request(remote: str | None, headers: dict[str, str] | None = None) -> web.Request:
    return make_mocked_request("GET", "/users/alice/", headers=headers or {}).clone(remote=remote)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost", "LOCALHOST.",
                                  "::ffff:127.0.0.1"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", None, "10.0.0.5", "192.168.1.2", "example.com",
                                  "::ffff:10.0.0.1"])
def test_hosts_beyond_loopback(host: str | None) -> None:
    assert not is_loopback(host)


def test_without_a_token_loopback_peers_only() -> None:
    settings = Settings(operator_token=None)
    check_operator(request("127.0.0.1"), settings)
    check_operator(request("::1"), settings)
    for peer in ("10.0.0.5", None):
        with pytest.raises(web.HTTPForbidden):
            check_operator(request(peer), settings)


def test_with_a_token_every_peer_must_send_it() -> None:
    settings = Settings(operator_token=SecretStr(TOKEN))
    for peer in ("127.0.0.1", "10.0.0.5"):
        check_operator(request(peer, {"Authorization": f"Bearer {TOKEN}"}), settings)
        check_operator(request(peer, {"Authorization": f"bearer {TOKEN}"}), settings)
        for headers in ({}, {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": f"Bearer {TOKEN[:-1]}"},
                        {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN}, {"Authorization": "Bearer "}):
            with pytest.raises(web.HTTPUnauthorized) as refused:
                check_operator(request(peer, headers), settings)
            assert refused.value.headers["WWW-Authenticate"].startswith("Bearer")
            assert TOKEN not in (refused.value.text or "")


def test_operator_headers_carry_the_token() -> None:
    assert operator_headers(Settings(operator_token=None)) == {}
    assert operator_headers(Settings(operator_token=SecretStr(TOKEN))) == {"Authorization": f"Bearer {TOKEN}"}


def test_a_short_token_is_refused() -> None:
    with pytest.raises(ValidationError):
        Settings(operator_token=SecretStr("short"))


def test_listening_beyond_loopback_needs_a_token() -> None:
    check_listen("127.0.0.1", Settings(operator_token=None), "worker")
    check_listen("0.0.0.0", Settings(operator_token=SecretStr(TOKEN)), "worker")
    for host in ("0.0.0.0", "", "10.0.0.5", "worker.internal"):
        with pytest.raises(ListenRefused, match="GOCHAT_OPERATOR_TOKEN"):
            check_listen(host, Settings(operator_token=None), "worker")


async def test_the_middleware_guards_every_route_but_the_open_ones() -> None:
    async def echo(request: web.Request) -> web.Response:
        return web.Response(text=request.match_info.get("user_id", "ok"))

    app = web.Application(middlewares=[operator_middleware(Settings(operator_token=SecretStr(TOKEN)), {"/health/"})])
    app.router.add_get("/health/", echo)
    app.router.add_get("/users/{user_id}/", echo)
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/health/")).status == 200
        for path in ("/users/alice/", "/health/../users/alice/", "/unknown/"):  # a route added later is guarded
            assert (await client.get(path)).status == 401
        response = await client.get("/users/alice/", headers={"Authorization": f"Bearer {TOKEN}"})
        assert (response.status, await response.text()) == (200, "alice")
        # A token that is not UTF-8 is refused like any other, not a 500.
        reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(b"GET /users/alice/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n"
                     b"Connection: close\r\n\r\n")
        assert (await reader.readline()).startswith(b"HTTP/1.1 401")
        writer.close()
        await writer.wait_closed()


async def test_the_middleware_audits_refusals_and_reads_but_not_the_polled_ones(
        caplog: pytest.LogCaptureFixture) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    audit = AuditLog("logic", producer_id="p")
    settings = Settings(operator_token=SecretStr(TOKEN))
    app = web.Application(middlewares=[operator_middleware(settings, {"/health/"}, audit, {"/metrics"})])
    for path in ("/health/", "/metrics", "/users/{user_id}/"):
        app.router.add_get(path, ok)
    authorized = {"Authorization": f"Bearer {TOKEN}"}
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/health/")).status == 200
        assert (await client.get("/metrics", headers=authorized)).status == 200
        assert (await client.get("/users/alice/", headers={"Authorization": "Bearer wrong"})).status == 401
        assert (await client.get("/users/alice/", headers=authorized)).status == 200
        assert (await client.get("/metrics")).status == 401
    lines = [r.getMessage() for r in caplog.records if r.name == "gochat.audit"]
    events = [json.loads(line) for line in lines]
    assert [(e["actor"], e["action"], e["target"], e["outcome"], e["source"], e["details"]["status"])
            for e in events] == [
        ("anonymous", "operator.read", "/users/alice/", "denied", "127.0.0.1", 401),
        ("operator", "operator.read", "/users/alice/", "success", "127.0.0.1", 200),
        ("anonymous", "operator.read", "/metrics", "denied", "127.0.0.1", 401),
    ]
    assert audit.pending == len(events)  # each also queued for the topic
    assert all(TOKEN not in line and "wrong" not in line for line in lines)
