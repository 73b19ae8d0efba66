"""Web views of the logic service, beside Faust's own ``/`` and ``/table/...`` views.

Keyed views answer on any logic worker's web port: the request is forwarded to the
worker that holds the key's partition (Faust's ``table_route``), since only that
worker has the key's entries. The tables' keys are raw bytes, so the router hashes an
id like the records that wrote it.

- ``GET /users/{user_id}/``: the user's delivery state: ``presence`` as the table
  holds it and, flattened, ``connections`` (``[{gateway_id, connection_id,
  connected_at}]``, oldest first); inbox cursor and pending count; delivered marks.
  Bounded reads: pending entries are counted up to ``VIEW_MAX_READS`` from the oldest
  (``"complete": false`` says the count stopped there); marks are counted from the
  user's log without a read, and only the newest ``RECENT_MARKS`` are read.
- ``GET /users/{user_id}/delivered/{sender}/{message_id}/``: whether the dedup
  remembers that message: ``{"delivered": true, "at", "seq", "pending"}`` (pending:
  not yet acknowledged) or ``{"delivered": false}``.
- ``GET /groups/{group_id}/``: ``{group_id, kind, owner, members}`` from the groups
  table; 404 ``{"error": "unknown group", "group_id"}``.

Faust's own ``/table/{name}/{key}/`` and ``/router/`` views read one key, or the
assignment, each.

Not routed, about the worker that answers:

- ``GET /health/``: 200 ``{"status": "ok"}`` while the web server runs.
- ``GET /ready/``: 200 ``{"ready": true}`` once the worker has recovered its tables
  after the latest rebalance and its agents consume; else 503 ``{"ready": false, "reason"}``.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

from faust import web

from .app import app, settings
from .models import now_ms
from .tables.dedup import CHUNK, Log, delivered_mark, mark_key, marks
from .tables.groups import groups
from .tables.inbox import Cursor, cursor_key, entry_key, inbox
from .tables.presence import presence

#: Newest delivered marks listed in a user's view (the count covers all).
RECENT_MARKS = 20
#: Inbox entries a user's view reads to count the pending ones. Views run on the event
#: loop of the worker's agents, between their events: a user's inbox may hold
#: ``inbox_max_pending`` (10,000) entries, and a view must not hold up delivery for as
#: long as the user has. The bound keeps a view's cost the same for every user.
VIEW_MAX_READS = 1000


@app.page("/users/{user_id}/")
@app.table_route(table=presence, match_info="user_id")
async def user_state(self: web.View, request: web.Request, user_id: str) -> web.Response:
    cursor = inbox.get(cursor_key(user_id))
    pending, pending_complete = ([], True) if cursor is None else pending_seqs(inbox, user_id, cursor, VIEW_MAX_READS)
    log = cursor["log"] if cursor else None
    gateways = presence.get(user_id) or {}
    connections = sorted(
        ({"gateway_id": gw, "connection_id": cid, "connected_at": at} for gw, conns in gateways.items()
         for cid, at in conns.items()),
        key=lambda c: (c["connected_at"], c["gateway_id"], c["connection_id"]),
    )
    return self.json({
        "user_id": user_id,
        "presence": gateways,
        "connections": connections,
        "inbox": {"cursor": cursor and {"next": cursor["next"], "floor": cursor["floor"]}, "pending": len(pending),
                  "first_pending": pending[0] if pending else None, "complete": pending_complete},
        "delivered": {"count": mark_count(log), "recent": newest_marks(inbox, user_id, log, RECENT_MARKS)},
    })


def pending_seqs(table: Mapping[str, Any], user_id: str, cursor: Cursor, max_reads: int) -> tuple[list[int], bool]:
    """Seqs of the user's unacknowledged entries among the oldest ``max_reads``; and whether that was all."""
    end = min(cursor["next"], cursor["floor"] + max_reads)
    return [seq for seq in range(cursor["floor"], end) if entry_key(user_id, seq) in table], end == cursor["next"]


def mark_count(log: Log | None) -> int:
    """The delivered marks a user's log lists, counted without a read: a sealed chunk holds CHUNK."""
    return 0 if log is None else (log["end"] - log["first"]) * CHUNK + len(log["recent"])


def newest_marks(table: MutableMapping[str, Any], user_id: str, log: Log | None, count: int) -> list[str]:
    """The newest ``count`` of the user's marks still stored, oldest first, read from the newest chunks only."""
    if log is None:
        return []
    chunks = -(-max(0, count - len(log["recent"])) // CHUNK)  # rounded up
    return marks(table, user_id, {**log, "first": max(log["first"], log["end"] - chunks)})[-count:]


# Routed by the user, not the mark's own key: marks live on the user's partition
# (tables/inbox.py), and presence has the inbox's partitioning.
@app.page("/users/{user_id}/delivered/{sender}/{message_id}/")
@app.table_route(table=presence, match_info="user_id")
async def delivered(self: web.View, request: web.Request, user_id: str, sender: str,
                    message_id: str) -> web.Response:
    # A mark past the TTL may still be stored (removal waits for the user's next
    # mark) but deliver no longer dedups with it: it is not delivered.
    mark = delivered_mark(inbox, mark_key(user_id, sender, message_id), now_ms(), settings.dedup_ttl_s * 1000)
    if mark is None:
        return self.json({"delivered": False})
    # The entry goes when the user acks it (or a full inbox drops it); seqs are never reused.
    entry = inbox.get(entry_key(user_id, mark["seq"]))
    pending = entry is not None and entry["message_id"] == message_id
    return self.json({"delivered": True, "at": mark["at"], "seq": mark["seq"], "pending": pending})


@app.page("/groups/{group_id}/")
@app.table_route(table=groups, match_info="group_id")
async def group_state(self: web.View, request: web.Request, group_id: str) -> web.Response:
    state = groups.get(group_id)
    if state is None:
        return self.error(404, "unknown group", group_id=group_id)
    return self.json({"group_id": group_id, **state})


@app.page("/health/")
async def health(self: web.View, request: web.Request) -> web.Response:
    return self.json({"status": "ok"})


@app.page("/ready/")
async def ready(self: web.View, request: web.Request) -> web.Response:
    # Faust sets app.rebalancing and clears tables.actives_ready when a rebalance
    # starts (consumer's revoke callback), and undoes both only at the end of the
    # recovery that follows, after it resumed the stream partitions and the fetcher
    # (faust/tables/recovery.py: on_recovery_completed). tables.recovery.completed
    # is never cleared: it only says the first recovery is over.
    if app.tables.actives_ready and not app.rebalancing:
        return self.json({"ready": True})
    reason = "recovering tables" if app.in_recovery else "rebalancing" if app.rebalancing else "starting"
    return self.json({"ready": False, "reason": reason}, status=503)
