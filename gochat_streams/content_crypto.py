"""Message content encryption: the content keyring and the sealed envelope (AES-256-GCM).

A user message (text, image, file, location) is sealed by the sending gateway before it
enters Kafka: its ``content`` becomes the envelope ``gcm1.<key id>.<nonce>.<ciphertext>``
(standard base64) and its ``metadata`` ``{}``. The ciphertext holds both,
``{"content": ..., "metadata": ...}``: the metadata of those types is the client's own
(file names, URLs, coordinates, fields a client added), and no service routes by it.
System messages stay clear: the logic service decides membership from their metadata and
writes their content itself, from ids only.

The message's identity, ``message_type``, ``conversation_id``, ``from_user_id`` and
``message_id``, and the envelope's version and key id are the associated data: a
ciphertext moved to another message, conversation or sender does not open.

The keyring's current key seals; every listed key opens. Content that is not an envelope
opens as itself: messages stored before encryption was turned on, or with it off.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel, TypeAdapter, ValidationError

from .models.messages import SEALED_PREFIX, USER_MESSAGE_TYPES, is_sealed
from .settings import DEV_CONTENT_KEY, ContentKeyId, Settings
from .store import MessageStore

#: The envelope's version and algorithm; the first field of every envelope.
ENVELOPE_VERSION = SEALED_PREFIX.removesuffix(".")
KEY_BYTES = 32
#: GCM's 96-bit nonce, random per message: 2^32 messages per key keep the chance of a
#: repeat under 2^-32 (NIST SP 800-38D); rotate well before that.
NONCE_BYTES = 12
_TAG_BYTES = 16

_KEY_ID: TypeAdapter[str] = TypeAdapter(ContentKeyId)

UnopenedReason = Literal["unknown_key", "tampered", "malformed"]


class ContentKeysMissing(ValueError):
    """No usable content keyring, and encryption is not turned off: the process must not start."""


class UnopenedContent(ValueError):
    """An envelope that does not open: its key is not in the keyring, or it was altered or moved."""

    def __init__(self, reason: UnopenedReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: UnopenedReason = reason
        self.detail = detail


@dataclass(frozen=True)
class ContentKeyring:
    #: key id -> 32-byte key
    keys: Mapping[str, bytes]
    #: The key that seals: the newest.
    current: str
    ciphers: dict[str, AESGCM] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.current not in self.keys:
            raise ContentKeysMissing(f"the current content key {self.current!r} is not listed")
        for kid, key in self.keys.items():
            _KEY_ID.validate_python(kid)
            if len(key) != KEY_BYTES:
                raise ContentKeysMissing(f"content key {kid!r} is {len(key)} bytes, not {KEY_BYTES} (AES-256)")
        object.__setattr__(self, "ciphers", {kid: AESGCM(key) for kid, key in self.keys.items()})

    def __repr__(self) -> str:  # never the keys
        return f"ContentKeyring(keys={sorted(self.keys)}, current={self.current!r})"


class _Message(Protocol):
    message_type: str
    message_id: str
    from_user_id: str
    conversation_id: str
    content: str
    metadata: dict[str, Any]


M = TypeVar("M", bound=BaseModel)


def new_key() -> str:
    """A fresh content key, as the keyring lists it (base64)."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def _associated_data(key_id: str, message_type: str, conversation_id: str, from_user_id: str,
                     message_id: str) -> bytes:
    # A JSON list: unambiguous whatever the ids hold.
    return json.dumps([ENVELOPE_VERSION, key_id, message_type, conversation_id, from_user_id, message_id]).encode()


def seal_content(keys: ContentKeyring, message_type: str, conversation_id: str, from_user_id: str,
                 message_id: str, content: str, metadata: Mapping[str, Any]) -> str:
    """The envelope of a message's content and metadata, under the current key."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    plain = json.dumps({"content": content, "metadata": metadata}, ensure_ascii=False, separators=(",", ":"))
    sealed = keys.ciphers[keys.current].encrypt(
        nonce, plain.encode(), _associated_data(keys.current, message_type, conversation_id, from_user_id, message_id))
    return ".".join((ENVELOPE_VERSION, keys.current, base64.b64encode(nonce).decode(),
                     base64.b64encode(sealed).decode()))


def open_content(keys: ContentKeyring, message_type: str, conversation_id: str, from_user_id: str,
                 message_id: str, envelope: str) -> tuple[str, dict[str, Any]]:
    """The content and metadata an envelope holds, or :class:`UnopenedContent`."""
    try:
        version, key_id, nonce_b64, sealed_b64 = envelope.split(".")
        nonce, sealed = base64.b64decode(nonce_b64, validate=True), base64.b64decode(sealed_b64, validate=True)
    except (ValueError, binascii.Error):
        raise UnopenedContent("malformed", f"message {message_id}: not a {ENVELOPE_VERSION} envelope") from None
    if version != ENVELOPE_VERSION or len(nonce) != NONCE_BYTES or len(sealed) < _TAG_BYTES:
        raise UnopenedContent("malformed", f"message {message_id}: not a {ENVELOPE_VERSION} envelope")
    cipher = keys.ciphers.get(key_id)
    if cipher is None:
        raise UnopenedContent("unknown_key", f"message {message_id} is sealed with content key {key_id!r}, which is "
                                             f"not in this keyring ({', '.join(sorted(keys.keys))})")
    try:
        plain = cipher.decrypt(nonce, sealed, _associated_data(key_id, message_type, conversation_id, from_user_id,
                                                               message_id))
        opened = json.loads(plain)
        return str(opened["content"]), dict(opened["metadata"])
    except InvalidTag:
        raise UnopenedContent("tampered", f"message {message_id} does not open with content key {key_id!r}: altered, "
                                          "or moved from another message") from None
    except (ValueError, KeyError, TypeError):
        raise UnopenedContent("malformed", f"message {message_id}: its sealed content is not a message body") from None


def key_id_of(envelope: str) -> str | None:
    """The key id an envelope names; None for content that is not one."""
    parts = envelope.split(".")
    return parts[1] if envelope.startswith(SEALED_PREFIX) and len(parts) == 4 else None


def seal(keys: ContentKeyring | None, message: M) -> M:
    """``message`` with a user message's content and metadata sealed; as is when encryption is off."""
    m: _Message = message  # type: ignore[assignment]
    if keys is None or m.message_type not in USER_MESSAGE_TYPES:
        return message
    envelope = seal_content(keys, m.message_type, m.conversation_id, m.from_user_id, m.message_id, m.content,
                            m.metadata)
    return message.model_copy(update={"content": envelope, "metadata": {}})


def open_message(keys: ContentKeyring | None, message: M) -> M:
    """``message`` with its content and metadata opened, or :class:`UnopenedContent`; clear content as is."""
    m: _Message = message  # type: ignore[assignment]
    if not is_sealed(m.message_type, m.content):
        return message
    if keys is None:
        raise UnopenedContent("unknown_key", f"message {m.message_id} is sealed, and content encryption is off "
                                             "here (no content keyring)")
    content, metadata = open_content(keys, m.message_type, m.conversation_id, m.from_user_id, m.message_id,
                                     m.content)
    return message.model_copy(update={"content": content, "metadata": metadata})


def sealed_length(plain_bytes: int, key_id_chars: int = 32) -> int:
    """The longest envelope of a body of ``plain_bytes``: what a record's sealed content may be."""
    def b64(n: int) -> int:
        return 4 * ((n + 2) // 3)

    return len(SEALED_PREFIX) + key_id_chars + 1 + b64(NONCE_BYTES) + 1 + b64(plain_bytes + _TAG_BYTES)


def max_sealed_chars(settings: Settings) -> int:
    """The longest sealed content a gateway sends and the logic service takes: a frame's worth."""
    return sealed_length(settings.max_frame_bytes)


# The keyring's sources: settings, or a key file that ``keys rotate`` writes.

def read_key_file(path: Path) -> tuple[dict[str, str], str | None]:
    """A key file's ``{"current": id, "keys": {id: base64}}``, as (keys, current)."""
    try:
        data = json.loads(path.read_text())
        keys, current = data["keys"], data.get("current")
        if not isinstance(keys, dict) or not all(isinstance(v, str) for v in keys.values()):
            raise TypeError
    except FileNotFoundError:
        raise ContentKeysMissing(f"content key file {path} does not exist (`python -m gochat_streams keys rotate` "
                                 "creates it)") from None
    except (ValueError, KeyError, TypeError):
        raise ContentKeysMissing(
            f"content key file {path} is not {{\"current\": id, \"keys\": {{id: base64}}}}") from None
    return keys, current


def write_key_file(path: Path, keys: Mapping[str, str], current: str) -> None:
    """Replace the key file atomically, readable by its owner only."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    tmp.touch(mode=0o600)
    tmp.write_text(json.dumps({"current": current, "keys": dict(keys)}, indent=1) + "\n")
    tmp.replace(path)


def content_keyring(settings: Settings) -> ContentKeyring | None:
    """The settings' content keyring; None when encryption is turned off; else :class:`ContentKeysMissing`."""
    if settings.content_encryption_disabled:
        return None
    if settings.content_keys and settings.content_keys_file is not None:
        raise ContentKeysMissing("set GOCHAT_CONTENT_KEYS or GOCHAT_CONTENT_KEYS_FILE, not both")
    if settings.content_keys_file is not None:
        encoded, current = read_key_file(settings.content_keys_file)
    elif settings.content_keys:
        encoded, current = {k: v.get_secret_value() for k, v in settings.content_keys.items()}, None
    else:
        raise ContentKeysMissing(
            "no content keys: set GOCHAT_CONTENT_KEYS_FILE (`python -m gochat_streams keys rotate` makes one) or "
            "GOCHAT_CONTENT_KEYS, or turn message encryption off with GOCHAT_CONTENT_ENCRYPTION_DISABLED=1")
    current = settings.content_key_id or current or (next(iter(encoded)) if len(encoded) == 1 else None)
    if current not in encoded:
        raise ContentKeysMissing(f"GOCHAT_CONTENT_KEY_ID must name the key that encrypts, one of {sorted(encoded)}")
    keys: dict[str, bytes] = {}
    for kid, value in encoded.items():
        try:
            keys[kid] = base64.b64decode(value, validate=True)
        except binascii.Error:
            raise ContentKeysMissing(f"content key {kid!r} is not base64") from None
        if value == DEV_CONTENT_KEY and not settings.dev_mode:
            raise ContentKeysMissing(
                f"content key {kid!r} is the built-in development key, which anyone can read: make a keyring with "
                "`python -m gochat_streams keys rotate` (GOCHAT_DEV_MODE=1 allows it)")
    try:
        return ContentKeyring(keys, current)
    except ValidationError:
        raise ContentKeysMissing(f"content key ids are letters, digits, _ and - (at most 32): {sorted(keys)}") from None


@dataclass
class Reencrypted:
    """What :func:`reencrypt` did to a store's history."""

    #: Messages sealed again under the current key (clear ones sealed for the first time).
    rewritten: int = 0
    #: Messages already under the current key.
    current: int = 0
    #: Messages that did not open, left as they were: the keys they need must not be retired.
    undecryptable: list[str] = field(default_factory=list)
    #: The conversations whose stored history changed (their cached lists are stale).
    conversations: set[str] = field(default_factory=set)


async def reencrypt(store: MessageStore, keys: ContentKeyring, *, batch: int = 500) -> Reencrypted:
    """Seal every stored user message under the current key, so that older keys can be retired.

    Batch by batch, each in one transaction; safe to run while the task service writes (new
    messages come sealed already) and to run again after an interruption.
    """
    done, after = Reencrypted(), 0
    while messages := await store.user_messages(after, batch):
        after = messages[-1].seq
        rewritten = []
        for m in messages:
            if key_id_of(m.content) == keys.current:
                done.current += 1
                continue
            try:
                rewritten.append(seal(keys, open_message(keys, m)))
            except UnopenedContent as exc:
                done.undecryptable.append(f"{m.from_user_id}/{m.message_id} ({exc.reason})")
        await store.rewrite(rewritten)
        done.rewritten += len(rewritten)
        done.conversations.update(m.conversation_id for m in rewritten)
    return done
