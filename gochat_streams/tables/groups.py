"""Groups and conversations: group_id -> ``{"kind", "owner", "members"}`` (conversations.py).

Event-sourced from the ``system_group`` / ``system_conversation`` messages on
``im-group-topic``; written and read only by agents/groups.py.
"""

from __future__ import annotations

from ..app import app, settings
from ..topics import changelog_config, group

groups = app.Table(
    "groups",
    default=None,
    key_type=bytes,  # raw: Faust's router (/table/ views) hashes it like the records' keys
    partitions=group(settings).partitions,
    extra_topic_configs=changelog_config(settings, app.conf.topic_replication_factor),
    help="group_id -> {kind, owner, members} of every group and conversation",
)
