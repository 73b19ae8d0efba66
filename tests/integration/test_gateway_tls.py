"""The gateway over TLS (gateway/tls.py): wss:// and https:// with a throwaway CA's certificate,
plain http refused at the handshake, and the demo page working over it in Chromium."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import aiohttp
import pytest

from .. import browser
from ..tls import server_certificate
from .conftest import WAIT_S, Cluster, token

pytestmark = pytest.mark.integration


async def test_the_gateway_speaks_tls_only_and_the_demo_page_works_over_it(cluster: Cluster, tmp_path: Path) -> None:
    cert = server_certificate(tmp_path / "tls")
    cluster.env.update(GOCHAT_GATEWAY_TLS_CERTFILE=str(cert.chain), GOCHAT_GATEWAY_TLS_KEYFILE=str(cert.key))
    gw = cluster.start_gateway("gw1")
    assert gw.startswith("https://")
    trusts_the_ca = ssl.create_default_context(cafile=str(cert.ca))
    alice = token("alice")
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"wss://{gw.removeprefix('https://')}/ws", ssl=trusts_the_ca,
                                   headers={"Authorization": f"Bearer {alice}"})
        await ws.send_json({"type": "send", "message": {
            "message_id": "m1", "to_user_id": "bob", "content": "over tls", "message_type": "text", "metadata": {}}})
        assert await ws.receive_json(timeout=WAIT_S) == {"type": "ack", "message_id": "m1"}
        await ws.close()
        async with http.get(f"{gw}/history", params={"conversation_id": "alice:bob"}, ssl=trusts_the_ca,
                            headers={"Authorization": f"Bearer {alice}"}) as response:
            assert response.status == 200
        # Plain http to the TLS port: the handshake fails, no request is read, nothing is answered.
        with pytest.raises(aiohttp.ClientError):
            async with http.get(f"http://{gw.removeprefix('https://')}/healthz"):
                pass
        # A client that does not trust the throwaway CA refuses the gateway: the certificate is checked.
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with http.get(f"{gw}/healthz"):
                pass

    # The page opens its socket with wss:// when loaded over https://; Chromium trusts this one
    # certificate's key (a pin on its SubjectPublicKeyInfo), in this test only.
    page_token = token("bob")
    dom = await asyncio.to_thread(browser.rendered_dom, f"{gw}/#token={page_token}", wait_ms=5000,
                                  flags=(f"--ignore-certificate-errors-spki-list={cert.spki_sha256}",))
    assert '<p id="who" class="meta">You are bob.</p>' in dom
    assert '<span id="status" class="online">online</span>' in dom
    log = (cluster.stack.log_dir / "gateway-gw1.log").read_text()
    assert "listening on https://" in log
    for secret in (alice, page_token):
        assert secret.rsplit(".", 1)[1] not in log
