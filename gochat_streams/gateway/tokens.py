"""Client tokens: ``base64url(user_id).expiry.base64url(HMAC-SHA256(secret, "b64user.expiry"))``."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time


class InvalidToken(ValueError):
    pass


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: str, signed: str) -> str:
    return _b64(hmac.new(secret.encode(), signed.encode(), hashlib.sha256).digest())


def issue_token(user_id: str, secret: str, ttl_s: int, *, now: float | None = None) -> str:
    expiry = int((time.time() if now is None else now) + ttl_s)
    signed = f"{_b64(user_id.encode())}.{expiry}"
    return f"{signed}.{_signature(secret, signed)}"


def verify_token(token: str, secret: str, *, now: float | None = None) -> str:
    """The token's user id, or :class:`InvalidToken` if it is malformed, forged or expired."""
    try:
        user_part, expiry_part, signature = token.split(".")
        expiry = int(expiry_part)
        user_id = _unb64(user_part).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidToken("malformed token") from None
    if not hmac.compare_digest(signature, _signature(secret, f"{user_part}.{expiry_part}")):
        raise InvalidToken("bad signature")
    if expiry < (time.time() if now is None else now):
        raise InvalidToken("token expired")
    return user_id
