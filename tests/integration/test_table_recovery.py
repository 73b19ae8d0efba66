"""A restarted worker's presence table holds exactly what was written.

Presence changes are produced in multi-record batches: table recovery must read to the
changelog's end, not to its last batch's first record.
"""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from gochat_streams import topics
from gochat_streams.codecs import encode
from gochat_streams.models import Delivery, DownstreamMessage, PresenceChange

from .conftest import Cluster, consume_all, produce

pytestmark = pytest.mark.integration

USERS = 60
GATEWAYS = ["gw-a", "gw-b", "gw-c"]


def _presence_history() -> tuple[list[tuple[str, bytes]], dict[str, str | None]]:
    """Four changes per user; the final gateway (or None: offline) of each user."""
    records, final = [], {}
    for i in range(USERS):
        user, first, second = f"u{i}", GATEWAYS[i % 3], GATEWAYS[(i + 1) % 3]

        def change(gw: str, conn: str, online: bool, at: int) -> tuple[str, bytes]:
            return user, encode(PresenceChange(user_id=user, gateway_id=gw, connection_id=conn, online=online,
                                               timestamp=at))

        records += [change(first, "a", True, 1), change(second, "b", True, 2), change(first, "a", False, 3)]
        if i % 4 == 0:
            records.append(change(second, "b", False, 4))
        final[user] = None if i % 4 == 0 else second
    return records, final


async def _routes(cluster: Cluster, probe: str) -> dict[str, list[str]]:
    """Deliver one message to every user; where each went: gateway ids, or task types if offline."""
    s = cluster.settings
    deliveries = [
        (f"u{i}", encode(Delivery(user_ids=[f"u{i}"], message=DownstreamMessage(
            message_id=f"{probe}-u{i}", from_user_id="sender", to_user_id=f"u{i}", conversation_id="c",
            content="probe", message_type="text", timestamp=1))))
        for i in range(USERS)
    ]
    await produce(s, topics.user(s).name, deliveries)
    ours = lambda r: r.value is not None and f'"{probe}-' in r.value.decode()  # noqa: E731
    downstream = {topics.downstream_name(s, gw): gw for gw in GATEWAYS}

    def complete(records: list[Any]) -> bool:
        seen = {r.key.decode() if r.topic in downstream else None for r in records if ours(r)}
        tasks = sum(1 for r in records if ours(r) and r.topic == topics.task(s).name)
        return len(seen - {None}) + tasks >= USERS

    records = await consume_all(s, [*downstream, topics.task(s).name], complete)
    routes: dict[str, list[str]] = {f"u{i}": [] for i in range(USERS)}
    for r in records:
        if not ours(r):
            continue
        if r.topic in downstream:
            routes[r.key.decode()].append(downstream[r.topic])
        else:
            routes[r.value.decode().split(f'"{probe}-', 1)[1].split('"', 1)[0]].append(r.key.decode())
    return {user: sorted(where) for user, where in routes.items()}


def _expected(final: dict[str, str | None]) -> dict[str, list[str]]:
    return {user: [gw] if gw else ["offline_push"] for user, gw in final.items()}


async def test_presence_table_is_exact_after_restarts(cluster: Cluster) -> None:
    s = cluster.settings
    await topics.ensure_topics(s, [*topics.core(s), *(topics.downstream(s, gw) for gw in GATEWAYS)])
    history, final = _presence_history()
    await produce(s, topics.user(s).name, history)

    cluster.start_worker("w1")
    assert await _routes(cluster, "first") == _expected(final)

    # Restart on its own RocksDB state: recovery reads the changelog from the stored offsets.
    cluster.stop_worker("w1")
    cluster.start_worker("w1")
    assert await _routes(cluster, "restart") == _expected(final)

    # Restart with no local state: the whole table comes back from the changelog.
    cluster.stop_worker("w1")
    shutil.rmtree(cluster.root / "w1")
    cluster.start_worker("w1")
    assert await _routes(cluster, "rebuilt") == _expected(final)
