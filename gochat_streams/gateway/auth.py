"""Who a request is: the user its token names, or 401.

A token travels in the ``Authorization: Bearer`` header or, from a browser (which cannot
set headers on a WebSocket), as the subprotocol ``token.<TOKEN>`` offered beside
:data:`PROTOCOL`, which the gateway selects in its answer. Never in the URL: URLs end up in
access logs, proxies and browser history; a ``token=`` there is blanked in the access log.
"""

from __future__ import annotations

import logging
import re

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from ..audit import AuditLog
from .keys import KEYRING
from .tokens import Claims, InvalidToken, claimed_user_id, verify_token

#: The WebSocket subprotocol of the gateway's frames: a client offering subprotocols offers this one.
PROTOCOL = "gochat"
#: Prefix of the subprotocol that carries a token.
TOKEN_PROTOCOL_PREFIX = "token."
#: Where :func:`verified` keeps the request's user, for the audit log of a later refusal (403).
_USER = "gochat.user_id"
#: What a refused request to each route was trying, in the audit log's words.
_ACTIONS = {"/ws": "login", "/history": "history.read", "/metrics": "operator.read"}


def offered_protocols(request: web.Request) -> list[str]:
    return [p.strip() for p in request.headers.get(hdrs.SEC_WEBSOCKET_PROTOCOL, "").split(",") if p.strip()]


def _token(request: web.Request) -> str | None:
    header = request.headers.get(hdrs.AUTHORIZATION, "")
    if header.startswith("Bearer "):
        return header[len("Bearer "):].strip()
    for protocol in offered_protocols(request):
        if protocol.startswith(TOKEN_PROTOCOL_PREFIX):
            return protocol[len(TOKEN_PROTOCOL_PREFIX):]
    return None


def verified(request: web.Request) -> Claims:
    """The request's token claims, or 401."""
    token = _token(request)
    if not token:
        raise web.HTTPUnauthorized(text="missing token: send Authorization: Bearer TOKEN")
    try:
        claims = verify_token(token, request.app[KEYRING])
    except InvalidToken as exc:
        raise web.HTTPUnauthorized(text=str(exc)) from None
    request[_USER] = claims.user_id
    return claims


def authenticate(request: web.Request) -> str:
    """The token's user, or 401."""
    return verified(request).user_id


def audit_refusals(audit: AuditLog) -> Middleware:
    """Records every 401 and 403 the gateway answers (refused logins, history reads, operator reads).

    The actor is the verified user (a 403), else the user a refused token claims to be
    (``claimed``: not verified), else anonymous; the reason is the answer's text, which
    names what failed, never the token.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as refused:
            if refused.status in (401, 403):
                user_id, claimed = request.get(_USER), None
                if user_id is None and (token := _token(request)):
                    user_id = claimed = claimed_user_id(token)
                target = request.query.get("conversation_id", request.path) if request.path == "/history" \
                    else request.path
                audit.record(user_id, _ACTIONS.get(request.path, "http.request"), target, "denied", request.remote,
                             status=refused.status, reason=refused.text, claimed=claimed is not None)
            raise

    return middleware


class RedactTokens(logging.Filter):
    """Blanks ``token=...`` in access-log lines: a client that puts its token in a URL is refused,
    and its token must not be kept in the log either (request line or Referer)."""

    _TOKEN = re.compile(r"(token=)[^&\s\"]+")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "token=" in message:
            record.msg, record.args = self._TOKEN.sub(r"\1[redacted]", message), None
        return True
