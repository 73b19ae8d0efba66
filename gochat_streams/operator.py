"""Who may use an operator endpoint: the one home of that decision.

Operator endpoints (the logic worker's views and Faust's ``/table/`` views, every
``/metrics``, the monitor) show whom users talk to and unacknowledged message text.
With ``GOCHAT_OPERATOR_TOKEN`` set, a request must carry ``Authorization: Bearer
<token>``; unset, only loopback peers are served, and a process refuses to listen
beyond loopback (``check_listen``). A reverse proxy on the same host makes every
request a loopback one: behind one, set the token.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Collection

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from .audit import AuditLog
from .settings import Settings

#: What a refused request is told to send (RFC 6750).
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="gochat operator"'}


class ListenRefused(RuntimeError):
    """A process was configured to serve operator endpoints beyond loopback without a token."""


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (a bind address or a peer's address) is this machine only.

    Names other than ``localhost`` count as beyond loopback: they may resolve anywhere.
    """
    if not host:
        return False  # "" binds every interface; a peer without an address is unknown
    if host.rstrip(".").lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def check_operator(request: web.Request, settings: Settings) -> None:
    """Return if ``request`` may use an operator endpoint; else raise 401 or 403."""
    token = settings.operator_token
    if token is None:
        if not is_loopback(request.remote):
            raise web.HTTPForbidden(text="operator endpoints serve loopback only: set GOCHAT_OPERATOR_TOKEN")
        return
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # compare_digest takes equal time whatever prefix matches; only the length may show.
    # surrogateescape: aiohttp decodes a header's invalid UTF-8 bytes to surrogates.
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode("utf-8", "surrogateescape"), token.get_secret_value().encode()
    ):
        raise web.HTTPUnauthorized(text="operator token required", headers=CHALLENGE)


def operator_middleware(settings: Settings, open_paths: Collection[str] = (), audit: AuditLog | None = None,
                        polled_paths: Collection[str] = ()) -> Middleware:
    """Guards every route of an aiohttp app, so a route added later is guarded too.

    ``open_paths``: liveness checks that leak nothing, left open for load balancers.
    ``audit``: records every refused request and every read, but the reads of
    ``polled_paths``: numbers that machines poll every few seconds (``/metrics``), where
    an event per scrape would bury the reads of users' data.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in open_paths:
            return await handler(request)
        try:
            check_operator(request, settings)
        except web.HTTPException as refused:
            if audit is not None:
                audit.record(None, "operator.read", request.path, "denied", request.remote, method=request.method,
                             status=refused.status, reason=refused.text)
            raise
        response = await handler(request)
        if audit is not None and request.path not in polled_paths:
            # With a token, whoever holds it; without, anyone on this host.
            audit.record("operator" if settings.operator_token else "loopback", "operator.read", request.path,
                         "success", request.remote, method=request.method, status=response.status)
        return response

    return middleware


def operator_headers(settings: Settings) -> dict[str, str]:
    """Headers a client of operator endpoints sends (the monitor scraping the gateways)."""
    token = settings.operator_token
    return {} if token is None else {"Authorization": f"Bearer {token.get_secret_value()}"}


def check_listen(host: str, settings: Settings, what: str) -> None:
    """Refuse to serve operator endpoints beyond loopback without an operator token."""
    if settings.operator_token is None and not is_loopback(host):
        raise ListenRefused(
            f"{what} would listen on {host or 'every interface'} and serves operator endpoints, "
            "which show users' contacts and messages: set GOCHAT_OPERATOR_TOKEN (16+ characters) "
            "to expose it, or listen on 127.0.0.1"
        )
