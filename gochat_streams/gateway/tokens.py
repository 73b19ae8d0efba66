"""Client tokens: ``key_id.base64url(user_id).expiry.base64url(HMAC-SHA256(secret, "key_id.b64user.expiry"))``.

Tokens are signed with a keyring's signing key and verified with whichever listed key
their id names: to rotate, list a new key and sign with it; tokens of the old one stay
valid until they expire or the old key is removed from the list.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import TypeAdapter, ValidationError

from ..models.common import UserId
from ..settings import DEV_AUTH_SECRET, Settings

#: A shorter secret can be found by brute force from one token.
MIN_SECRET_BYTES = 32
#: The key id of ``GOCHAT_AUTH_SECRET`` (a keyring of one): list that secret under this
#: id in ``GOCHAT_AUTH_KEYS`` and the tokens it signed stay valid.
DEFAULT_KEY_ID = "default"

#: A token names a user id as the models take it: one with ":" would be ambiguous in a
#: single chat's id, and would fail every message it sent.
_USER_ID: TypeAdapter[str] = TypeAdapter(UserId)


class InvalidToken(ValueError):
    pass


class InsecureKeyring(ValueError):
    """The token keys are missing, inconsistent, or too weak to run outside dev mode."""


@dataclass(frozen=True)
class Keyring:
    #: key id -> secret
    keys: Mapping[str, bytes]
    signing_key_id: str

    @classmethod
    def single(cls, secret: str, key_id: str = DEFAULT_KEY_ID) -> Keyring:
        return cls({key_id: secret.encode()}, key_id)


@dataclass(frozen=True)
class Claims:
    user_id: str
    #: Unix seconds after which the token is refused (and a socket it opened is closed).
    expires_at: int


def keyring(settings: Settings) -> Keyring:
    """The settings' token keys, or :class:`InsecureKeyring` saying what to set."""
    if settings.auth_keys:
        if "auth_secret" in settings.model_fields_set:
            raise InsecureKeyring("set GOCHAT_AUTH_KEYS or GOCHAT_AUTH_SECRET, not both")
        keys = {kid: secret.get_secret_value().encode() for kid, secret in settings.auth_keys.items()}
        signing = settings.auth_signing_key or (next(iter(keys)) if len(keys) == 1 else None)
        if signing not in keys:
            raise InsecureKeyring(f"GOCHAT_AUTH_SIGNING_KEY must name the key that signs, one of {sorted(keys)}")
    else:
        if settings.auth_signing_key not in (None, DEFAULT_KEY_ID):
            raise InsecureKeyring("GOCHAT_AUTH_SIGNING_KEY names a key of GOCHAT_AUTH_KEYS, which is not set")
        keys, signing = {DEFAULT_KEY_ID: settings.auth_secret.get_secret_value().encode()}, DEFAULT_KEY_ID
    if not settings.dev_mode:
        for kid, secret in keys.items():
            if secret == DEV_AUTH_SECRET.encode():
                raise InsecureKeyring(
                    f"token key {kid!r} is the built-in development secret, with which anyone can sign a "
                    "token for any user: set GOCHAT_AUTH_SECRET (or GOCHAT_AUTH_KEYS) to a random secret "
                    f"of {MIN_SECRET_BYTES}+ bytes, e.g. `openssl rand -base64 48` (GOCHAT_DEV_MODE=1 allows it)")
            if len(secret) < MIN_SECRET_BYTES:
                raise InsecureKeyring(
                    f"token key {kid!r} is {len(secret)} bytes: use a random secret of {MIN_SECRET_BYTES}+ "
                    "bytes, e.g. `openssl rand -base64 48` (GOCHAT_DEV_MODE=1 allows short ones)")
    return Keyring(keys, signing)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: bytes, signed: str) -> str:
    return _b64(hmac.new(secret, signed.encode(), hashlib.sha256).digest())


def issue_token(user_id: str, keys: Keyring, ttl_s: int, *, now: float | None = None) -> str:
    """A token for ``user_id``; ValueError if it is not a user id."""
    _USER_ID.validate_python(user_id)
    expiry = int((time.time() if now is None else now) + ttl_s)
    signed = f"{keys.signing_key_id}.{_b64(user_id.encode())}.{expiry}"
    return f"{signed}.{_signature(keys.keys[keys.signing_key_id], signed)}"


def claimed_user_id(token: str) -> str | None:
    """The user a token names, NOT verified: only to say in the audit log whom a refused token claimed to be."""
    try:
        user_id = _unb64(token.split(".")[1]).decode()
        _USER_ID.validate_python(user_id)
    except (IndexError, ValueError, binascii.Error, UnicodeDecodeError, ValidationError):
        return None
    return user_id


def verify_token(token: str, keys: Keyring, *, now: float | None = None) -> Claims:
    """The token's claims, or :class:`InvalidToken` if it is malformed, forged, expired or its key unknown."""
    try:
        key_id, user_part, expiry_part, signature = token.split(".")
        expiry = int(expiry_part)
        user_id = _unb64(user_part).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidToken("malformed token") from None
    secret = keys.keys.get(key_id)
    if secret is None:
        raise InvalidToken("unknown key")
    expected = _signature(secret, f"{key_id}.{user_part}.{expiry_part}")
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        raise InvalidToken("bad signature")
    if expiry < (time.time() if now is None else now):
        raise InvalidToken("token expired")
    try:
        _USER_ID.validate_python(user_id)
    except ValidationError:
        raise InvalidToken("not a user id") from None
    return Claims(user_id, expiry)
