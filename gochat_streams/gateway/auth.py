"""Who a request is: the user its token names, or 401."""

from __future__ import annotations

from aiohttp import web

from .keys import SETTINGS
from .tokens import InvalidToken, verify_token


def _token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header[len("Bearer "):].strip()
    return request.query.get("token")


def authenticate(request: web.Request) -> str:
    """The token's user, or 401."""
    token = _token(request)
    if not token:
        raise web.HTTPUnauthorized(text="missing token")
    try:
        return verify_token(token, request.app[SETTINGS].auth_secret.get_secret_value())
    except InvalidToken as exc:
        raise web.HTTPUnauthorized(text=str(exc)) from None
