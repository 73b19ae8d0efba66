"""Each user's delivery state, in one table so that its writes stay in order.

``inbox`` holds, per user, four kinds of keys (ids cannot contain "/" or "#",
models/common.py, so they cannot collide):

- ``"{user}"`` -> ``{"next": seq to assign, "floor": lowest seq that may be pending,
  "log": the delivered marks' expiry log}``
- ``"{user}/{seq}"`` -> an unacknowledged DownstreamMessage, as a dict
- ``"{user}/{sender}/{message_id}"`` -> ``{"at": ms, "seq": n}``: delivered (tables/dedup.py)
- ``"{user}#{n}"``: a sealed chunk of that expiry log (tables/dedup.py)

Why one table: Faust writes a table's changelog on the partition of the event being
handled, and the producer keeps one partition's records in order. One event's writes
to one table therefore reach the changelog as a prefix of what was written: a worker
killed half-way leaves an entry without its mark, never a mark without its entry.
(The app's Table, compat/faust.py, queues each write's changelog record and produces
the queue in write order after the handler, through the same producer, before the
event's offset can be committed: the prefix property holds as with Faust's own path;
tests/unit/test_table_changelog.py.)
agents/delivery.py relies on that when a crash makes it handle a record again.

Sequence numbers are per user and only grow, so reconnect sync reads
``floor..next-1`` in order. Written only by agents/delivery.py from ``im-user-topic``,
so the table is partitioned like it (read it only there), and it lives in a
changelog, so a restart of every process keeps it.
"""

from __future__ import annotations

from typing import TypedDict

from ..app import app, settings
from ..topics import changelog_config, user
from .dedup import Log


class Cursor(TypedDict):
    next: int
    floor: int
    log: Log | None


inbox = app.Table(
    "inbox",
    default=None,
    key_type=bytes,  # raw: Faust's router (/table/ views) hashes it like the records' keys
    partitions=user(settings).partitions,
    extra_topic_configs=changelog_config(settings, app.conf.topic_replication_factor),
    help="user -> {next, floor}; user/seq -> pending message; user/sender/message_id -> delivered mark",
)


def cursor_key(user_id: str) -> str:
    return user_id


def entry_key(user_id: str, seq: int) -> str:
    return f"{user_id}/{seq}"
