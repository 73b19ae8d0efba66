"""Gateway authentication: where a token may travel, that none is logged, expiry, key rotation,
and the secret a gateway refuses to start with (gateway/auth.py, gateway/tokens.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import aiohttp
import pytest

from gochat_streams.gateway.tokens import Keyring, issue_token, verify_token

from .. import browser
from .conftest import OPERATOR_TOKEN, WAIT_S, Cluster, token

pytestmark = pytest.mark.integration

OLD_KEY, NEW_KEY = "o" * 40, "n" * 40


async def test_a_browser_sends_its_token_as_a_subprotocol_and_no_token_reaches_a_log(
    cluster: Cluster, connect: Any
) -> None:
    cluster.start_worker()
    gw = cluster.start_gateway("gw1")
    bob = await connect(gw, "bob")  # Authorization: Bearer
    alice_token, url_token = token("alice"), token("mallory")
    async with aiohttp.ClientSession() as http:
        # As web/chat.html does: the token as a subprotocol beside "gochat", which the gateway selects.
        alice = await http.ws_connect(f"{gw}/ws", protocols=("gochat", f"token.{alice_token}"))
        assert alice.protocol == "gochat"
        await alice.send_json({"type": "send", "message": {
            "message_id": "m1", "to_user_id": "bob", "content": "hi", "message_type": "text", "metadata": {}}})
        assert await alice.receive_json(timeout=WAIT_S) == {"type": "ack", "message_id": "m1"}
        assert [(m["from_user_id"], m["message_id"]) for m in await bob.messages(1)] == [("alice", "m1")]
        await alice.close()

        # Not in the URL (access logs, proxies, browser history keep URLs): refused.
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{gw}/ws?token={url_token}")
        assert refused.value.status == 401
        # A client offering subprotocols must offer "gochat" (aiohttp would log the others).
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{gw}/ws", protocols=(f"token.{url_token}",))
        assert refused.value.status == 400
        async with http.get(f"{gw}/history", params={"conversation_id": "g1"},
                            headers={"Authorization": f"Bearer {alice_token}"}) as response:
            assert response.status in (200, 403)

    await bob.ws.close()
    log = (cluster.stack.log_dir / "gateway-gw1.log").read_text()
    assert "GET /ws" in log and "GET /history" in log  # the access log is on
    for secret in (alice_token, token("bob"), url_token):
        assert secret.rsplit(".", 1)[1] not in log  # not even the signature


async def test_the_demo_page_reads_its_token_from_the_fragment_and_sends_it_as_a_subprotocol(
    cluster: Cluster,
) -> None:
    gw = cluster.start_gateway("gw1")
    page_token = token("bob")
    # As `make run` prints it: the fragment is never sent to the server.
    dom = await asyncio.to_thread(browser.rendered_dom, f"{gw}/#token={page_token}", wait_ms=5000)
    assert '<p id="who" class="meta">You are bob.</p>' in dom
    assert '<span id="status" class="online">online</span>' in dom  # the socket opened
    assert page_token.rsplit(".", 1)[1] not in (cluster.stack.log_dir / "gateway-gw1.log").read_text()


async def test_a_socket_is_closed_when_its_token_expires(cluster: Cluster) -> None:
    gw = cluster.start_gateway("gw1")
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{gw}/ws", headers={"Authorization": f"Bearer {token('alice', ttl_s=3)}"})
        frame = await ws.receive_json(timeout=10)
        assert (frame["type"], frame["code"]) == ("error", "token_expired")
        closing = await ws.receive(timeout=10)
        assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, aiohttp.WSCloseCode.POLICY_VIOLATION)


async def test_a_rotated_keyring_accepts_tokens_of_the_old_key_and_signs_with_the_new(
    cluster: Cluster, connect: Any
) -> None:
    del cluster.env["GOCHAT_AUTH_SECRET"]
    cluster.env.update({"GOCHAT_DEV_MODE": "0", "GOCHAT_AUTH_KEYS": f'{{"k1": "{OLD_KEY}", "k2": "{NEW_KEY}"}}',
                        "GOCHAT_AUTH_SIGNING_KEY": "k2"})
    gw = cluster.start_gateway("gw1")
    before = issue_token("alice", Keyring({"k1": OLD_KEY.encode()}, "k1"), 3600)
    after = issue_token("bob", Keyring({"k2": NEW_KEY.encode()}, "k2"), 3600)
    removed = issue_token("carol", Keyring({"k0": OLD_KEY.encode()}, "k0"), 3600)
    async with aiohttp.ClientSession() as http:
        for accepted in (before, after):
            ws = await http.ws_connect(f"{gw}/ws", headers={"Authorization": f"Bearer {accepted}"})
            await ws.close()
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{gw}/ws", headers={"Authorization": f"Bearer {removed}"})
        assert refused.value.status == 401

    # The token command signs with the signing key.
    printed = await _run([sys.executable, "-m", "gochat_streams", "token", "dave"], cluster.env)
    assert printed.returncode == 0, printed.stdout
    issued = printed.stdout.strip().splitlines()[-1]
    assert issued.startswith("k2.")
    assert verify_token(issued, Keyring({"k2": NEW_KEY.encode()}, "k2")).user_id == "dave"


async def test_the_gateways_metrics_want_the_operator_token_when_one_is_set(cluster: Cluster) -> None:
    cluster.env["GOCHAT_OPERATOR_TOKEN"] = OPERATOR_TOKEN
    gw = cluster.start_gateway("gw1")
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": f"Bearer {token('alice')}"}, {"Authorization": "Bearer wrong"}):
            async with http.get(f"{gw}/metrics", headers=headers) as response:
                assert response.status == 401
        async with http.get(f"{gw}/metrics", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}) as response:
            assert response.status == 200
            assert "gochat_gateway_connections" in await response.text()
        async with http.get(f"{gw}/healthz") as response:  # load balancers' check stays open
            assert response.status == 200


@pytest.mark.parametrize("secret", [None, "short-but-not-default"], ids=["default", "short"])
async def test_outside_dev_mode_the_gateway_refuses_to_start_with_a_weak_secret(
    cluster: Cluster, secret: str | None
) -> None:
    env = {**cluster.env, "GOCHAT_DEV_MODE": "0", "GOCHAT_GATEWAY_ID": "gw1"}
    del env["GOCHAT_AUTH_SECRET"]
    if secret is not None:
        env["GOCHAT_AUTH_SECRET"] = secret
    started = await _run([sys.executable, "-m", "gochat_streams", "gateway"], env)
    assert started.returncode == 1
    assert started.stdout.startswith("gateway not started: token key 'default' ")
    assert ("built-in development secret" if secret is None else "use a random secret of 32+ bytes") in started.stdout
    assert secret is None or secret not in started.stdout  # the message names the key, not the secret
    # Nor does the token command sign with it.
    printed = await _run([sys.executable, "-m", "gochat_streams", "token", "alice"], env)
    assert printed.returncode == 1 and printed.stdout.startswith("no token: token key 'default' ")


async def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a command to its end; its output (stderr included) as ``stdout``."""
    return await asyncio.to_thread(subprocess.run, args, env={**os.environ, **env}, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, timeout=WAIT_S)
