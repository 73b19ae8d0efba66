"""Messages already delivered to each user, for ``dedup_ttl_s``: a resend or a replay is found.

Marks live in the ``inbox`` table (tables/inbox.py says why):
``"{user}/{sender}/{message_id}"`` -> ``{"at": ms, "seq": inbox seq}``. The sender is
part of the key because message ids are the clients' own. Expiry needs no scan: each
user's marks are also listed, oldest first, in a :class:`Log` that the user's inbox
cursor carries, so that keeping a message costs no extra write for it. The newest
marks are in the log itself; every ``CHUNK`` of them are sealed into a chunk
``"{user}#{n}"`` -> ``{"last_at", "keys"}``. Listing a mark first drops the user's
chunks whose newest mark has expired.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from typing import Any, TypedDict

#: Marks per chunk of a user's log: small values, few chunks, one chunk write per CHUNK marks.
CHUNK = 16


class Mark(TypedDict):
    at: int
    seq: int


class Log(TypedDict):
    """A user's marks, oldest first: chunks ``first <= n < end``, then ``recent`` (newest at ``recent_at``)."""

    first: int
    end: int
    recent: list[str]
    recent_at: int


def mark_key(user_id: str, sender: str, message_id: str) -> str:
    return f"{user_id}/{sender}/{message_id}"


def delivered_mark(table: MutableMapping[str, Any], key: str, now_ms: int, ttl_ms: int) -> Mark | None:
    """The mark of a message delivered within ``ttl_ms``, if there is one."""
    mark = table.get(key)
    return mark if mark is not None and now_ms - mark["at"] <= ttl_ms else None


def remember(table: MutableMapping[str, Any], user_id: str, log: Log | None, key: str, seq: int, now_ms: int,
             ttl_ms: int) -> Log:
    """Mark ``key`` as delivered to ``user_id`` now as inbox ``seq``; the log to store in the cursor.

    The chunk writes and removals come before the mark, the mark before the caller's
    cursor: a worker killed in between leaves a mark that ``listed`` must add to the
    log when the message is handled again (agents/delivery.py does).
    """
    log = listed(table, user_id, log, key, now_ms, ttl_ms)
    table[key] = {"at": now_ms, "seq": seq}
    return log


def listed(table: MutableMapping[str, Any], user_id: str, log: Log | None, key: str, now_ms: int,
           ttl_ms: int) -> Log:
    """``log`` with ``key`` appended, after removing the marks (and chunks) that have expired."""
    first, end, recent = (log["first"], log["end"], log["recent"]) if log else (0, 0, [])
    while first < end:
        chunk_key = f"{user_id}#{first}"
        if (chunk := table.get(chunk_key)) is not None:  # None: removed by a worker killed before its cursor
            if now_ms - chunk["last_at"] <= ttl_ms:
                break
            _forget(table, chunk["keys"])
            del table[chunk_key]
        first += 1
    if log and recent and now_ms - log["recent_at"] > ttl_ms:
        _forget(table, recent)
        recent = []
    recent = [*recent, key]
    if len(recent) >= CHUNK:
        table[f"{user_id}#{end}"] = {"last_at": now_ms, "keys": recent}
        end, recent = end + 1, []
    return {"first": first, "end": end, "recent": recent, "recent_at": now_ms}


def _forget(table: MutableMapping[str, Any], keys: Iterable[str]) -> None:
    for key in keys:
        if key in table:
            del table[key]


def marks(table: MutableMapping[str, Any], user_id: str, log: Log | None) -> list[str]:
    """The user's marks not yet removed, oldest first (expired ones go at the next ``remember``)."""
    if log is None:
        return []
    chunks = (table.get(f"{user_id}#{n}") or {"keys": []} for n in range(log["first"], log["end"]))
    keys = [key for chunk in chunks for key in chunk["keys"]] + log["recent"]
    return list(dict.fromkeys(key for key in keys if key in table))
