"""Presence: user_id -> the gateways holding the user's sockets.

Value: ``{gateway_id: {connection_id: connected_at_ms}}`` (a user may be connected
from several devices through several gateways). Written only by agents/delivery.py,
from ``im-user-topic``, so it has that topic's partitioning: read it only there.
"""

from __future__ import annotations

from ..app import app, settings
from ..topics import changelog_config, user

Connections = dict[str, dict[str, int]]

presence = app.Table(
    "presence",
    default=None,
    key_type=bytes,  # raw: Faust's router (/table/ views) hashes it like the records' keys
    partitions=user(settings).partitions,
    extra_topic_configs=changelog_config(settings, app.conf.topic_replication_factor),
    help="user_id -> {gateway_id: {connection_id: connected_at_ms}} for every connected user",
)


def with_connection(current: Connections | None, gateway_id: str, connection_id: str, at_ms: int) -> Connections:
    gateways = {gw: dict(conns) for gw, conns in (current or {}).items()}
    gateways.setdefault(gateway_id, {})[connection_id] = at_ms
    return gateways


def without_connection(current: Connections | None, gateway_id: str, connection_id: str) -> Connections:
    gateways = {gw: dict(conns) for gw, conns in (current or {}).items()}
    conns = gateways.get(gateway_id)
    if conns is not None:
        conns.pop(connection_id, None)
        if not conns:
            del gateways[gateway_id]
    return gateways


def without_stale(current: Connections | None, gateway_id: str, before_ms: int) -> Connections:
    """Drop the user's connections on ``gateway_id`` that opened before ``before_ms``."""
    gateways = {gw: dict(conns) for gw, conns in (current or {}).items()}
    conns = {cid: at for cid, at in gateways.pop(gateway_id, {}).items() if at >= before_ms}
    if conns:
        gateways[gateway_id] = conns
    return gateways
