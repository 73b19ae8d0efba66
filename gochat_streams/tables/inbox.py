"""Each user's inbox: the messages delivered to them and not yet acknowledged.

``inbox_cursors``: user_id -> ``{"next": seq to assign, "floor": lowest seq that may
still be pending}``. ``inbox``: ``"{user_id}/{seq}"`` -> the DownstreamMessage as a
dict. Sequence numbers are per user and only grow, so reconnect sync reads
``floor..next-1`` in order. Both are written only by agents/delivery.py from
``im-user-topic``, so they are partitioned like it (read them only there), and they
live in changelogs, so a restart of every process keeps them.
"""

from __future__ import annotations

from typing import TypedDict

from ..app import app, settings
from ..topics import user


class Cursor(TypedDict):
    next: int
    floor: int


inbox_cursors = app.Table(
    "inbox_cursors",
    default=None,
    key_type=str,
    partitions=user(settings).partitions,
    help="user_id -> {next, floor}: the user's inbox sequence numbers",
)

inbox = app.Table(
    "inbox",
    default=None,
    key_type=str,
    partitions=user(settings).partitions,
    help="user_id/seq -> an unacknowledged message for reconnect sync",
)


def inbox_key(user_id: str, seq: int) -> str:
    # Ids cannot contain "/" (models/common.py), so the key is unambiguous.
    return f"{user_id}/{seq}"
