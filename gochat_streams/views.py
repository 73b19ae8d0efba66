"""Web views of the logic service, beside Faust's own ``/table/...`` views.

``GET /users/{user_id}/`` on any logic worker's web port answers with the user's
delivery state: presence, inbox cursor and pending count, and the messages marked
delivered. The request is forwarded to the worker that holds the user's partition
(Faust's ``table_route``), since only that worker has the user's entries.
"""

from __future__ import annotations

from faust import web

from .app import app
from .tables.dedup import marks
from .tables.inbox import cursor_key, entry_key, inbox
from .tables.presence import presence

#: Newest delivered marks listed in a user's view (the count covers all).
RECENT_MARKS = 20


@app.page("/users/{user_id}/")
@app.table_route(table=presence, match_info="user_id")
async def user_state(self: web.View, request: web.Request, user_id: str) -> web.Response:
    cursor = inbox.get(cursor_key(user_id))
    pending = [] if cursor is None else [
        seq for seq in range(cursor["floor"], cursor["next"]) if entry_key(user_id, seq) in inbox
    ]
    delivered = marks(inbox, user_id)
    return self.json({
        "user_id": user_id,
        "presence": presence.get(user_id) or {},
        "inbox": {"cursor": cursor, "pending": len(pending), "first_pending": pending[0] if pending else None},
        "delivered": {"count": len(delivered), "recent": delivered[-RECENT_MARKS:]},
    })
