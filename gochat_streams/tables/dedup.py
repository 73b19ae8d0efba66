"""Messages already delivered to each user, for ``dedup_ttl_s``: a resend or a replay is dropped.

``delivered``: ``"{user}/{sender}/{message_id}"`` -> when it was delivered (ms). The
sender is part of the key because message ids are the clients' own. Expiry needs no
scan: each user's keys are also kept, oldest first, in chunks of ``delivered_log``
(``"{user}#{n}"`` -> ``{"last_at", "keys"}``, and ``"{user}#"`` -> ``{"first", "last"}``);
remembering a key first drops the user's chunks whose newest entry has expired.
Written only by agents/delivery.py from ``im-user-topic``, like the inbox.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from ..app import app, settings
from ..topics import user

#: Keys per chunk of a user's log: small values, few chunks.
CHUNK = 32

delivered = app.Table(
    "delivered",
    default=None,
    key_type=str,
    partitions=user(settings).partitions,
    help="user/sender/message_id -> delivered at (ms), kept dedup_ttl_s",
)

delivered_log = app.Table(
    "delivered_log",
    default=None,
    key_type=str,
    partitions=user(settings).partitions,
    help="user#n -> chunk of the user's delivered keys, oldest first; user# -> {first, last}",
)


def delivery_key(user_id: str, sender: str, message_id: str) -> str:
    # Ids cannot contain "/" or "#" (models/common.py), so keys are unambiguous.
    return f"{user_id}/{sender}/{message_id}"


def already_delivered(seen: MutableMapping[str, Any], key: str, now_ms: int, ttl_ms: int) -> bool:
    at = seen.get(key)
    return at is not None and now_ms - at <= ttl_ms


def remember(seen: MutableMapping[str, Any], log: MutableMapping[str, Any], user_id: str, key: str,
             now_ms: int, ttl_ms: int) -> None:
    """Record ``key`` as delivered to ``user_id`` now, after forgetting what has expired."""
    head = f"{user_id}#"
    cursor = log.get(head) or {"first": 0, "last": 0}
    first, last = cursor["first"], cursor["last"]
    while first <= last and (chunk := log.get(f"{head}{first}")) is not None \
            and now_ms - chunk["last_at"] > ttl_ms:
        for old in chunk["keys"]:
            if old in seen:
                del seen[old]
        del log[f"{head}{first}"]
        first += 1
    last = max(last, first)
    chunk = log.get(f"{head}{last}")
    if chunk is not None and len(chunk["keys"]) >= CHUNK:
        last += 1
        chunk = None
    keys = [*(chunk["keys"] if chunk else []), key]
    log[f"{head}{last}"] = {"last_at": now_ms, "keys": keys}
    log[head] = {"first": first, "last": last}
    seen[key] = now_ms
