"""The gateway's TLS: ``https://`` and ``wss://`` with the certificate of ``GOCHAT_GATEWAY_TLS_CERTFILE``.

Tokens cross the network in a header or the WebSocket subprotocol: without TLS anyone on
the path reads them, and the messages too. With a certificate set, the gateway's port
speaks TLS only: a plain-http client fails at the handshake, before any request is read.
"""

from __future__ import annotations

import ssl

from ..settings import Settings


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server's TLS context, None when no certificate is set; ValueError or OSError saying what is wrong."""
    certfile, keyfile = settings.gateway_tls_certfile, settings.gateway_tls_keyfile
    if certfile is None and keyfile is None:
        return None
    if certfile is None or keyfile is None:
        raise ValueError("set both GOCHAT_GATEWAY_TLS_CERTFILE and GOCHAT_GATEWAY_TLS_KEYFILE, or neither")
    # Whoever reads the key can pose as the gateway. Group read stays allowed: Debian's
    # convention is root:ssl-cert 0640.
    if keyfile.stat().st_mode & 0o007:
        raise ValueError(f"{keyfile} is open to every account on this host: chmod o-rwx it (0600 or 0640)")
    # The default server context: no SSLv3/TLS 1.0/1.1 ciphers of old, no compression.
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile, keyfile)
    except ssl.SSLError as exc:
        raise ValueError(f"{certfile} and {keyfile} are not a PEM certificate (chain) and its key: {exc}") from None
    return context
