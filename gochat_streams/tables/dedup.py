"""Messages already delivered to each user, for ``dedup_ttl_s``: a resend or a replay is found.

Marks live in the ``inbox`` table (tables/inbox.py says why):
``"{user}/{sender}/{message_id}"`` -> ``{"at": ms, "seq": inbox seq}``. The sender is
part of the key because message ids are the clients' own. Expiry needs no scan: each
user's marks are also listed, oldest first, in chunks (``"{user}#{n}"`` ->
``{"last_at", "keys"}``, and ``"{user}#"`` -> ``{"first", "last"}``); remembering a
mark first drops the user's chunks whose newest mark has expired.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any, TypedDict

#: Marks per chunk of a user's log: small values, few chunks.
CHUNK = 32


class Mark(TypedDict):
    at: int
    seq: int


def mark_key(user_id: str, sender: str, message_id: str) -> str:
    return f"{user_id}/{sender}/{message_id}"


def delivered_mark(table: MutableMapping[str, Any], key: str, now_ms: int, ttl_ms: int) -> Mark | None:
    """The mark of a message delivered within ``ttl_ms``, if there is one."""
    mark = table.get(key)
    return mark if mark is not None and now_ms - mark["at"] <= ttl_ms else None


def remember(table: MutableMapping[str, Any], user_id: str, key: str, seq: int, now_ms: int, ttl_ms: int) -> None:
    """Mark ``key`` as delivered to ``user_id`` now as inbox ``seq``, after forgetting what has expired."""
    head = f"{user_id}#"
    log = table.get(head) or {"first": 0, "last": 0}
    first, last = log["first"], log["last"]
    while first <= last and (chunk := table.get(f"{head}{first}")) is not None \
            and now_ms - chunk["last_at"] > ttl_ms:
        for old in chunk["keys"]:
            if old in table:
                del table[old]
        del table[f"{head}{first}"]
        first += 1
    last = max(last, first)
    chunk = table.get(f"{head}{last}")
    if chunk is not None and len(chunk["keys"]) >= CHUNK:
        last += 1
        chunk = None
    table[f"{head}{last}"] = {"last_at": now_ms, "keys": [*(chunk["keys"] if chunk else []), key]}
    table[head] = {"first": first, "last": last}
    table[key] = {"at": now_ms, "seq": seq}


def marks(table: MutableMapping[str, Any], user_id: str) -> list[str]:
    """The user's marks not yet removed, oldest first (expired ones go at the next ``remember``)."""
    head = f"{user_id}#"
    log = table.get(head)
    if log is None:
        return []
    keys = (key for n in range(log["first"], log["last"] + 1) for key in (table.get(f"{head}{n}") or {}).get("keys", []))
    return list(dict.fromkeys(key for key in keys if key in table))
