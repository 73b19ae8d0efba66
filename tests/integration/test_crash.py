"""kill -9 of a logic worker under load: every message reaches its socket once, in order."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gochat_streams import topics
from gochat_streams.kafka import read_to_end

from .conftest import WAIT_S, Client, Cluster

pytestmark = pytest.mark.integration

SENDERS = 20
PER_SENDER = 1000
RECIPIENTS = 10
#: Messages received in all before the kill: mid-stream.
KILL_AFTER = 5000


@pytest.mark.timeout(600)  # about 2.5 min on 2 idle cores; the suite's 300 s default is too close
async def test_a_worker_killed_mid_stream_loses_and_doubles_nothing(cluster: Cluster, connect: Any) -> None:
    # The gateways' per-socket flood limits are not what this test is about.
    # Nor are the gateways' heartbeats: one client process reading 40,000 frames answers a
    # ping late, and a socket closed for it would take its user offline mid-test.
    cluster.env.update({"GOCHAT_MAX_FRAMES_PER_S": "100000", "GOCHAT_MAX_FRAMES_BURST": "100000",
                        "GOCHAT_WS_HEARTBEAT_S": "600"})
    cluster.start_worker("w1")
    cluster.start_worker("w2")
    gateways = [cluster.start_gateway("gw1"), cluster.start_gateway("gw2")]
    senders = [await connect(gateways[i % 2], f"sender{i}") for i in range(SENDERS)]
    # Each recipient gets the messages of two senders, one on each gateway.
    recipients = [await connect(gateways[i % 2], f"rcpt{i}") for i in range(RECIPIENTS)]
    expected = {r.user_id: {s.user_id: [f"{s.user_id}-{n}" for n in range(PER_SENDER)]
                            for j, s in enumerate(senders) if j % RECIPIENTS == i}
                for i, r in enumerate(recipients)}

    received: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    total, last_progress = 0, time.monotonic()
    killed = asyncio.Event()

    async def receive(client: Client) -> None:
        """Every frame until all messages are in and 3 s pass quietly (reading all along keeps the socket alive)."""
        nonlocal total, last_progress
        quiet_s = 0.0
        while quiet_s < 3.0:
            try:
                frame = await client.next_frame(timeout=0.5)
            except TimeoutError:
                if total >= SENDERS * PER_SENDER:
                    quiet_s += 0.5
                if time.monotonic() - last_progress >= 2 * WAIT_S:
                    stalled = await _whereabouts(cluster, expected, received)
                    dump = await _dump(cluster, {key.split("<-")[0] for key in stalled if "<-" in key})
                    pytest.fail(f"stalled at {total} messages: {stalled}; records in {dump}")
                continue
            assert frame["type"] == "message", frame
            message = frame["message"]
            received[client.user_id][message["from_user_id"]].append(message["message_id"])
            await client.ack(message["message_id"])
            total, last_progress, quiet_s = total + 1, time.monotonic(), 0.0
            if total == KILL_AFTER:
                cluster.kill_worker("w1")
                killed.set()

    async def send(client: Client, to: str) -> None:
        for n in range(PER_SENDER):
            await client.send(f"{client.user_id}-{n}", to, content=f"{n}")
        for n in range(PER_SENDER):
            assert await client.next_frame(timeout=2 * WAIT_S) == {"type": "ack", "message_id": f"{client.user_id}-{n}"}

    async def restart() -> None:
        await killed.wait()
        # As if the machine were lost: its tables come back from the changelogs alone.
        shutil.rmtree(cluster.root / "w1")
        await asyncio.to_thread(cluster.start_worker, "w1")

    await asyncio.gather(
        *(receive(r) for r in recipients),
        *(send(s, f"rcpt{i % RECIPIENTS}") for i, s in enumerate(senders)),
        restart(),
    )

    # Exactly once, in each sender's order.
    got = {user: dict(by_sender) for user, by_sender in received.items()}
    assert _differences(got, expected) == {}
    assert got == expected

    # The restarted worker took partitions back, and the tables it serves came from
    # the changelogs: presence, the delivered marks, and an inbox emptied by the acks.
    user_topic = topics.user(cluster.settings)
    assert cluster.assigned("w1", user_topic.name)
    async with aiohttp.ClientSession() as http:
        for i, r in enumerate(recipients):
            # Until its partition is recovered wherever it now lives, a user's view is empty.
            state = await _user_state(http, cluster, r.user_id, _settled, expected[r.user_id])
            assert list(state["presence"]) == [f"gw{i % 2 + 1}"]
            assert state["delivered"]["count"] == 2 * PER_SENDER
            # Faust's own view, asked on the other worker, finds the owner too.
            async with http.get(f"http://127.0.0.1:{cluster.web_ports['w2']}/table/presence/{r.user_id}/") as response:
                assert list(await response.json()) == [f"gw{i % 2 + 1}"]


async def _whereabouts(cluster: Cluster, expected: dict[str, dict[str, list[str]]],
                       received: dict[str, dict[str, list[str]]]) -> dict[str, Any]:
    """Where the workers have each missing message: its delivered mark, and its recipient's state."""
    out: dict[str, Any] = {}
    port = cluster.web_ports["w2"]  # alive throughout; /users/ views are routed to the owner
    async with aiohttp.ClientSession() as http:
        for worker, worker_port in cluster.web_ports.items():
            async with http.get(f"http://127.0.0.1:{worker_port}/ready/") as r:
                out[f"{worker} ready"] = await r.json()
        for user, by_sender in expected.items():
            for sender, ids in by_sender.items():
                for message_id in sorted(set(ids) - set(received[user][sender]))[:3]:
                    async with http.get(f"http://127.0.0.1:{port}/users/{user}/delivered/{sender}/{message_id}/") as r:
                        mark = await r.json()
                    async with http.get(f"http://127.0.0.1:{port}/users/{user}/") as r:
                        state = await r.json()
                    out[f"{user}<-{message_id}"] = {"mark": mark, "presence": state["presence"],
                                                    "inbox": state["inbox"]}
    return out


def _settled(state: dict[str, Any]) -> bool:
    """Every message kept and acknowledged: the cursor is past them all, nothing is pending."""
    cursor = state["inbox"]["cursor"]
    return cursor is not None and cursor["next"] == 2 * PER_SENDER + 1 and state["inbox"]["pending"] == 0


async def _dump(cluster: Cluster, users: set[str]) -> Path:
    """The users' records in im-user-topic and the inbox changelog, one JSON line each, in a file."""
    path = cluster.root / "records.jsonl"
    s = cluster.settings
    with path.open("w") as out:
        for topic in (topics.user(s).name, f"{s.namespace}im-logic-group-inbox-changelog"):
            for r in await read_to_end(s, topic):
                key = r.key.decode() if r.key else ""
                if key.split("/")[0].split("#")[0] in users:
                    value = r.value.decode(errors="replace")[:300] if r.value is not None else None
                    out.write(json.dumps({"topic": topic, "p": r.partition, "o": r.offset, "key": key,
                                          "value": value}) + "\n")
    return path


async def _user_state(http: aiohttp.ClientSession, cluster: Cluster, user_id: str, until: Any,
                      sent: dict[str, list[str]]) -> dict[str, Any]:
    """The user's state as the owning worker has it (asked of w1), once ``until(state)`` holds (acks may be in flight)."""
    port = cluster.web_ports["w1"]
    state: dict[str, Any] | None = None
    try:
        async with asyncio.timeout(WAIT_S):
            while True:
                async with http.get(f"http://127.0.0.1:{port}/users/{user_id}/") as response:
                    if response.status == 200 and until(state := await response.json()):
                        return state
                await asyncio.sleep(0.5)
    except TimeoutError:
        pending = {}
        for sender, ids in sent.items():  # which messages the inbox still holds, and as which seq
            for message_id in ids:
                async with http.get(f"http://127.0.0.1:{port}/users/{user_id}/delivered/{sender}/{message_id}/") as r:
                    if (mark := await r.json()).get("pending"):
                        pending[message_id] = mark
        pytest.fail(f"{user_id}'s state did not settle within {WAIT_S}s; last seen: {state}; pending: {pending}; "
                    f"records in {await _dump(cluster, {user_id})}")


def _differences(got: dict[str, dict[str, list[str]]], expected: dict[str, dict[str, list[str]]]) -> dict[str, Any]:
    """Per recipient and sender: how many copies, how many missing, whether out of order."""
    out: dict[str, Any] = {}
    for user, by_sender in expected.items():
        for sender, ids in by_sender.items():
            seen = got.get(user, {}).get(sender, [])
            copies, missing = len(seen) - len(set(seen)), len(set(ids) - set(seen))
            in_order = list(dict.fromkeys(seen)) == [i for i in ids if i in set(seen)]
            if copies or missing or not in_order:
                out[f"{user}<-{sender}"] = {"copies": copies, "missing": missing, "in_order": in_order}
    return out
