"""A worker stopped gracefully leaves its consumer group at once, so its successor does not wait for it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from gochat_streams import topics
from gochat_streams.kafka import client_kwargs

from .conftest import Cluster

pytestmark = pytest.mark.integration

#: The group's session and rebalance timeouts here: longer than a worker may take to be
#: ready (WAIT_S), so a successor that had to wait for the old member to time out fails
#: the test; under Faust's request timeout (90 s), which a session may not exceed.
SESSION_S = 80


async def _members(cluster: Cluster, group_id: str) -> list[str]:
    """The member ids the broker lists in ``group_id`` now."""
    admin = AIOKafkaAdminClient(**client_kwargs(cluster.settings))
    await admin.start()
    try:
        [response] = await admin.describe_consumer_groups([group_id])
    finally:
        await admin.close()
    [group] = response.to_object()["groups"]
    return [member["member_id"] for member in group["members"]]


async def test_a_gracefully_stopped_worker_is_replaced_without_waiting_for_its_session(
        cluster: Cluster, connect: Any) -> None:
    cluster.env.update({"GOCHAT_SESSION_TIMEOUT_S": str(SESSION_S), "GOCHAT_REBALANCE_TIMEOUT_S": str(SESSION_S)})
    group_id = topics.logic_group(cluster.settings).group_id
    cluster.start_worker("w1")
    gw = cluster.start_gateway("gw1")
    alice, bob = await connect(gw, "alice"), await connect(gw, "bob")
    await alice.send("before", "bob")
    assert [m["message_id"] for m in await bob.messages(1, ack=True)] == ["before"]
    [first] = await _members(cluster, group_id)

    cluster.stop_worker("w1")
    # The worker said goodbye before it exited: the broker lists nobody in the group.
    assert await _members(cluster, group_id) == []
    assert "LeaveGroup request succeeded" in (cluster.stack.log_dir / "w1.log").read_text(errors="replace")

    # Its successor gets every partition and delivers before the old member's session could have ended.
    old_session = asyncio.create_task(asyncio.sleep(SESSION_S))
    await asyncio.to_thread(cluster.start_worker, "w1")
    await alice.send("after", "bob")
    assert [m["message_id"] for m in await bob.messages(1, timeout=SESSION_S)] == ["after"]
    assert not old_session.done(), "the successor served only once the old member's session was over"
    old_session.cancel()
    [successor] = await _members(cluster, group_id)
    assert successor != first
    assert cluster.assigned("w1", topics.user(cluster.settings).name) == set(
        range(cluster.settings.user_partitions))
