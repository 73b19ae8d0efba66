"""The gateway when the broker goes away: senders get error frames, not silence."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gochat_streams.devstack import free_port

from .conftest import Cluster

pytestmark = pytest.mark.integration


async def test_a_sender_gets_an_error_frame_while_the_broker_is_down(cluster: Cluster, connect: Any) -> None:
    # A broker of this test's own, to stop.
    broker = cluster.stack.start_broker(free_port())
    broker_proc = cluster.stack.procs[-1][1]
    cluster.env.update({"GOCHAT_BROKER_URL": broker, "GOCHAT_SEND_TIMEOUT_S": "2", "GOCHAT_MAX_UNSENT": "1"})
    gw = cluster.start_gateway("gw1")
    alice, carol = await connect(gw, "alice"), await connect(gw, "carol")
    await alice.send("before", "bob")
    assert await alice.next_frame() == {"type": "ack", "message_id": "before"}

    cluster.stack.stop_one(broker_proc)
    await alice.send("during", "bob")
    await asyncio.sleep(0.5)
    # alice's message is the one the gateway may hold: carol is refused at once.
    await carol.send("crowded", "bob")
    frame = await carol.next_frame(timeout=1)
    assert (frame["type"], frame["code"], frame["message_id"]) == ("error", "broker_unavailable", "crowded")
    # alice's gives up after GOCHAT_SEND_TIMEOUT_S, not aiokafka's 40 s.
    frame = await alice.next_frame(timeout=15)
    assert (frame["type"], frame["code"], frame["message_id"]) == ("error", "broker_unavailable", "during")
    # The socket stays open and usable.
    await alice.ws.send_str("{not json")
    assert (await asyncio.wait_for(alice.next_frame(), 5))["code"] == "malformed_json"


def test_a_gateway_that_cannot_start_exits(cluster: Cluster) -> None:
    """A supervisor restarts a gateway that exits; one that hangs after failing to start is down for good.

    Its message store's thread kept the process alive once its broker clients failed to start.
    """
    cluster.env["GOCHAT_BROKER_URL"] = f"kafka://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(RuntimeError, match="exited"):
        cluster.start_gateway("gw1")
    assert cluster.stack.procs[-1][1].returncode != 0
