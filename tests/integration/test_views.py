"""The logic workers' web views (gochat_streams/views.py): either worker answers for any key, as its owner has it."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka.partitioner import DefaultPartitioner
from yarl import URL

from gochat_streams import topics
from gochat_streams.devstack import free_port
from gochat_streams.models import now_ms

from .conftest import OPERATOR_TOKEN, WAIT_S, Client, Cluster

pytestmark = pytest.mark.integration

WORKERS = ("w1", "w2")
#: What /ready/ may say while a worker starts (views.py: ready).
NOT_READY = [{"ready": False, "reason": reason} for reason in ("starting", "rebalancing", "recovering tables")]


async def test_views_answer_alike_on_every_worker_for_users_and_groups(cluster: Cluster, connect: Any) -> None:
    async with aiohttp.ClientSession() as http:
        # Readiness: asked as soon as a worker's web port opens (Faust starts its web
        # server before it joins the group), a worker is not ready; once it is, it is.
        for name in WORKERS:
            port = _start_worker_unready(cluster, name)
            assert await _get(http, port, "/ready/") in [(503, body) for body in NOT_READY]
            cluster.wait_for_log(name, "[^Worker]: Ready")
        # w2's join made w1 rebalance too: wait until both are through.
        for name in WORKERS:
            await _until(http, cluster.web_ports[name], "/ready/", lambda status, _: status == 200)

        # Keys owned by each worker: the raw id hashed like the records that wrote it.
        s = cluster.settings
        users = await _one_per_worker(http, cluster, "presence", [f"user{i}" for i in range(100)],
                                      topics.user(s).partitions)
        groups = await _one_per_worker(http, cluster, "groups", [f"group{i}" for i in range(100)],
                                       topics.group(s).partitions)
        a, b = users["w1"], users["w2"]
        ga, gb = groups["w1"], groups["w2"]
        c = next(f"user{i}" for i in range(100) if f"user{i}" not in (a, b))

        gw1, gw2 = cluster.start_gateway("gw1"), cluster.start_gateway("gw2")
        before_connect = now_ms()
        alice = await connect(gw1, a)
        bob = await connect(gw2, b)
        carol_1 = await connect(gw1, c)
        # The gateway stamps a connection after the handshake: c's second one is
        # made once the first is in presence, so that it is the newer one.
        await _until(http, cluster.web_ports["w1"], f"/users/{c}/", lambda _, state: state["connections"])
        carol_2 = await connect(gw2, c)

        # Groups: ga (a's, on w1) is created with b, then c joins; gb (b's, on w2) is
        # created with a and c, then c leaves. Each step is seen before the next.
        await alice.group_action(f"create-{ga}", ga, "create", member_ids=[b])
        await _acked(alice, f"create-{ga}")
        await _received({bob: f"create-{ga}"})
        await carol_1.group_action(f"join-{ga}", ga, "join")
        await _acked(carol_1, f"join-{ga}")
        await _received({alice: f"join-{ga}", bob: f"join-{ga}", carol_2: f"join-{ga}"})
        await bob.group_action(f"create-{gb}", gb, "create", member_ids=[a, c])
        await _acked(bob, f"create-{gb}")
        await _received({alice: f"create-{gb}", carol_1: f"create-{gb}", carol_2: f"create-{gb}"})
        await carol_1.group_action(f"leave-{gb}", gb, "leave")
        await _acked(carol_1, f"leave-{gb}")
        await _received({alice: f"leave-{gb}", bob: f"leave-{gb}", carol_2: f"leave-{gb}"})

        # One message each way between w1's user and w2's, received and not yet acked.
        # Every socket got messages routed on presence: its connection was stamped by now.
        # One after the other: a sender's ack and the other's message to it are not ordered.
        before_send = now_ms()
        await alice.send("to-b", b)
        await _acked(alice, "to-b")
        assert [m["message_id"] for m in await bob.messages(1)] == ["to-b"]
        await bob.send("to-a", a)
        await _acked(bob, "to-a")
        assert [m["message_id"] for m in await alice.messages(1)] == ["to-a"]
        after_receive = now_ms()

        ports = [cluster.web_ports[name] for name in WORKERS]

        # Users: the connections are the presence table's, flattened, oldest first.
        gateways = {a: ["gw1"], b: ["gw2"], c: ["gw1", "gw2"]}
        marks = {a: [f"{a}/{c}/join-{ga}", f"{a}/{b}/create-{gb}", f"{a}/{c}/leave-{gb}", f"{a}/{b}/to-a"],
                 b: [f"{b}/{a}/create-{ga}", f"{b}/{c}/join-{ga}", f"{b}/{c}/leave-{gb}", f"{b}/{a}/to-b"]}
        for user, expected_gateways in gateways.items():
            # The acks of what came before the message may still be on their way.
            await _until(http, ports[0], f"/users/{user}/", lambda _, state: state["inbox"]["pending"] <= 1)
            answers = [await _get(http, port, f"/users/{user}/") for port in ports]
            assert answers[0] == answers[1]
            status, state = answers[0]
            assert status == 200
            _, presence = await _get(http, ports[1], f"/table/presence/{user}/")  # Faust's own view
            assert state["presence"] == presence
            assert state["connections"] == sorted(
                ({"gateway_id": gw, "connection_id": cid, "connected_at": at}
                 for gw, conns in presence.items() for cid, at in conns.items()),
                key=lambda conn: conn["connected_at"])
            assert [conn["gateway_id"] for conn in state["connections"]] == expected_gateways
            assert len({conn["connection_id"] for conn in state["connections"]}) == len(expected_gateways)
            assert all(before_connect <= conn["connected_at"] <= before_send for conn in state["connections"])
            if user in marks:  # a and b were sent one message each, not acked; the rest they acked
                assert state["delivered"] == {"count": 4, "recent": marks[user]}
                assert state["inbox"] == {"cursor": {"next": 5, "floor": 4}, "pending": 1, "first_pending": 4,
                                          "complete": True}

        # Groups: members in the order they joined.
        expected_groups = {ga: {"group_id": ga, "kind": "group", "owner": a, "members": [a, b, c]},
                           gb: {"group_id": gb, "kind": "group", "owner": b, "members": [b, a]}}
        for group_id, expected in expected_groups.items():
            for port in ports:
                assert await _get(http, port, f"/groups/{group_id}/") == (200, expected)
        for port in ports:
            assert await _get(http, port, "/groups/nogroup/") == (
                404, {"error": "unknown group", "group_id": "nogroup"})

        # Delivered: pending until the recipient acks, then remembered without the entry.
        for recipient, sender, message_id in ((bob, a, "to-b"), (alice, b, "to-a")):
            path = f"/users/{recipient.user_id}/delivered/{sender}/{message_id}/"
            answers = [await _get(http, port, path) for port in ports]
            assert answers[0] == answers[1]
            status, mark = answers[0]
            assert status == 200
            at = mark.pop("at")
            assert before_send <= at <= after_receive
            assert mark == {"delivered": True, "seq": 4, "pending": True}
            await recipient.ack(message_id)
            for port in ports:
                assert await _until(http, port, path, lambda _, body: not body["pending"]) == (
                    200, {"delivered": True, "at": at, "seq": 4, "pending": False})
            for unknown in (f"{sender}/nope", f"{c}/{message_id}"):  # another id; the same id from another sender
                for port in ports:
                    assert await _get(http, port, f"/users/{recipient.user_id}/delivered/{unknown}/") == (
                        200, {"delivered": False})

        # Not routed: each worker about itself. Faust's own views are still there.
        for port in ports:
            assert await _get(http, port, "/health/") == (200, {"status": "ok"})
            assert await _get(http, port, "/ready/") == (200, {"ready": True})
            assert await _get(http, port, "/") == (200, {"status": "OK"})
            status, tables = await _get(http, port, "/table/")
            assert (status, sorted(t["name"] for t in tables)) == (200, ["groups", "inbox", "presence"])


#: Routes of each kind a logic worker serves besides the keyed ones: Faust's own and /metrics.
#: The guard is one middleware on the whole aiohttp app (app.py), not a list of routes.
WORKER_PATHS = ["/table/", "/table/inbox/", "/router/", "/router/presence/", "/metrics", "/"]


async def test_every_worker_route_wants_the_operator_token_and_a_forwarded_request_carries_it(
        cluster: Cluster, connect: Any) -> None:
    cluster.env["GOCHAT_OPERATOR_TOKEN"] = OPERATOR_TOKEN
    good = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    refused = [{}, {"Authorization": f"Bearer {OPERATOR_TOKEN[:-1]}x"}, {"Authorization": "Bearer "},
               {"Authorization": f"Basic {OPERATOR_TOKEN}"}, {"Authorization": OPERATOR_TOKEN}]
    for name in WORKERS:
        cluster.start_worker(name)
    cluster.start_task_worker()
    ports = [cluster.web_ports[name] for name in WORKERS]
    async with aiohttp.ClientSession() as http:
        for path in ("/metrics", "/", "/table/"):  # the task worker's web server: the same guard
            url = f"http://127.0.0.1:{cluster.web_ports['tasks']}{path}"
            assert [await _status(http, url, headers) for headers in [good, *refused]] == [200] + [401] * len(refused)
        for port in ports:  # liveness leaks nothing: open to load balancers
            await _until(http, port, "/ready/", lambda status, _: status == 200)
            assert await _get(http, port, "/health/") == (200, {"status": "ok"})
        users = await _one_per_worker(http, cluster, "presence", [f"user{i}" for i in range(100)],
                                      topics.user(cluster.settings).partitions, good)
        gw = cluster.start_gateway("gw1")
        for user in users.values():
            await connect(gw, user)
        for name, user in users.items():
            # Asked at each worker: one answers itself, the other forwards to it with the caller's token.
            for port in ports:
                await _until(http, port, f"/users/{user}/", lambda status, state: state["connections"], good)
            keyed = [f"/users/{user}/", f"/users/{user}/delivered/someone/m1/", f"/table/presence/{user}/"]
            for path in keyed:
                answers = [await _get(http, port, path, good) for port in ports]
                assert answers[0][0] == 200 and answers[0] == answers[1], (path, answers)
            for path in [*keyed, *WORKER_PATHS]:
                for port in ports:
                    assert await _status(http, f"http://127.0.0.1:{port}{path}", good) == 200, path
                    for headers in refused:
                        assert await _status(http, f"http://127.0.0.1:{port}{path}", headers) == 401, (path, headers)
    # Not in an access log, a forwarded request's log, or anywhere else.
    for log in cluster.stack.log_dir.glob("*.log"):
        assert OPERATOR_TOKEN not in log.read_text(errors="replace"), log.name


async def test_a_worker_refuses_to_listen_beyond_loopback_without_the_operator_token(cluster: Cluster) -> None:
    # Whichever way the interface is given: our setting, Faust's own variable.
    for name, app, env in (("open1", "gochat_streams.app:app", {"GOCHAT_WEB_BIND": "0.0.0.0"}),
                           ("open2", "gochat_streams.app:app", {"WEB_BIND": "0.0.0.0"}),
                           ("open3", "gochat_streams.app:task_app", {"GOCHAT_WEB_BIND": "10.0.0.1"})):
        with pytest.raises(RuntimeError, match="exited"):
            cluster.stack.start_worker(name, {**cluster.env, **env, "GOCHAT_DATA_DIR": str(cluster.root / name)},
                                       free_port(), app=app)
        assert "set GOCHAT_OPERATOR_TOKEN" in (cluster.stack.log_dir / f"{name}.log").read_text(), name


async def test_a_worker_listens_on_loopback_unless_bound_beyond_it_and_then_wants_the_token(cluster: Cluster) -> None:
    # Where a worker listens is read from the kernel's socket table: a test reaches only
    # loopback, so it checks the bound address rather than connecting from another host.
    cluster.start_worker("w1")  # the defaults
    assert _listening_addresses(cluster.web_ports["w1"]) == {"127.0.0.1"}

    cluster.env.update({"GOCHAT_OPERATOR_TOKEN": OPERATOR_TOKEN, "GOCHAT_WEB_BIND": "0.0.0.0"})
    cluster.start_worker("w2")
    port = cluster.web_ports["w2"]
    assert _listening_addresses(port) == {"0.0.0.0"}
    url = f"http://127.0.0.1:{port}/users/alice/"
    async with aiohttp.ClientSession() as http:
        assert await _status(http, url, {}) == 401
        # With the token it answers, once w2's join has settled: until then the key's owner is
        # unknown and Faust's router answers 503 (Kafka's rebalances are quick enough to overlap).
        token = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
        async with asyncio.timeout(WAIT_S):
            while (status := await _status(http, url, token)) == 503:
                await asyncio.sleep(0.2)
        assert status == 200
        assert await _status(http, f"http://127.0.0.1:{port}/health/", {}) == 200


def _listening_addresses(port: int) -> set[str]:
    """The IPv4 addresses a TCP socket listens on at ``port``, from /proc/net/tcp."""
    addresses = set()
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = row.split()[1], row.split()[3]
        address, local_port = local.split(":")
        if state == "0A" and int(local_port, 16) == port:  # 0A: LISTEN
            addresses.add(str(ipaddress.IPv4Address(bytes.fromhex(address)[::-1])))
    return addresses


def _start_worker_unready(cluster: Cluster, name: str) -> int:
    """Like ``cluster.start_worker``, but back as soon as the worker's web port opens; its port."""
    data_dir = cluster.root / name
    data_dir.mkdir(exist_ok=True)
    port = cluster.web_ports[name] = free_port()
    cluster.workers[name] = cluster.stack.start_worker(name, {**cluster.env, "GOCHAT_DATA_DIR": str(data_dir)}, port)
    return port


async def _one_per_worker(http: aiohttp.ClientSession, cluster: Cluster, table: str, candidates: list[str],
                          partitions: int, headers: dict[str, str] | None = None) -> dict[str, str]:
    """For each worker, the first candidate key whose partition of ``table`` it owns.

    Ownership as Faust's assignor tells it (``/router/{table}/``: worker URL -> changelog
    partitions), which both workers must agree on; a key's partition is the raw id's
    murmur2 hash, as the records that wrote it were partitioned.
    """
    by_port = {cluster.web_ports[name]: name for name in WORKERS}
    routes: list[tuple[int, Any]] = []

    async def agreed() -> dict[str, set[int]] | None:
        routes[:] = [await _get(http, cluster.web_ports[name], f"/router/{table}/", headers) for name in WORKERS]
        if routes[0] != routes[1] or routes[0][0] != 200:
            return None
        shares: dict[str, set[int]] = {name: set() for name in WORKERS}
        for url, tps in routes[0][1].items():
            if URL(url).port not in by_port:
                return None
            shares[by_port[URL(url).port]].update(p for ps in tps.values() for p in ps)
        whole = not shares["w1"] & shares["w2"] and shares["w1"] | shares["w2"] == set(range(partitions))
        return shares if whole else None

    # Both ready is not both settled: the second worker's join moves partitions from the
    # first, and a router read during that rebalance lists no owner (seen on Kafka, whose
    # rebalances are quick enough to overlap the reads). Both must come to agree on a
    # split of all partitions.
    try:
        async with asyncio.timeout(WAIT_S):
            while (shares := await agreed()) is None:
                await asyncio.sleep(0.2)
    except TimeoutError:
        pytest.fail(f"the workers' routers never agreed on a split of {table}'s partitions: {routes}")
    everyone = list(range(partitions))
    owners = {key: next(name for name, share in shares.items()
                        if DefaultPartitioner()(key.encode(), everyone, everyone) in share) for key in candidates}
    return {name: next(key for key, owner in owners.items() if owner == name) for name in WORKERS}


async def _get(http: aiohttp.ClientSession, port: int, path: str,
               headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with http.get(f"http://127.0.0.1:{port}{path}", headers=headers) as response:
        return response.status, await response.json()


async def _status(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> int:
    async with http.get(url, headers=headers) as response:
        return response.status


async def _until(http: aiohttp.ClientSession, port: int, path: str, check: Any,
                 headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """GET ``path`` until ``check(status, body)`` holds."""
    async with asyncio.timeout(WAIT_S):
        while True:
            status, body = await _get(http, port, path, headers)
            if check(status, body):
                return status, body
            await asyncio.sleep(0.2)


async def _acked(client: Client, message_id: str) -> None:
    assert await client.next_frame() == {"type": "ack", "message_id": message_id}


async def _received(expected: dict[Client, str]) -> None:
    """Each client's next frame is the message, which it acks."""
    for client, message_id in expected.items():
        assert [m["message_id"] for m in await client.messages(1, ack=True)] == [message_id]
