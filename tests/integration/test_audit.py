"""The audit log on a real gateway, logic worker and command: the events each action writes to
im-audit-topic, no secret among them, ``audit verify`` on the whole log, and on a copy with an
edited and a deleted event (gochat_streams/audit.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import getpass
import json
import os
import sys
from typing import Any

import aiohttp
import pytest

from gochat_streams import topics
from gochat_streams.audit import read_records

from .conftest import OPERATOR_TOKEN, WAIT_S, Cluster, consume_all, history, produce, token

pytestmark = pytest.mark.integration

CONTENT = "audit-test-private-text"


async def _command(cluster: Cluster, *args: str) -> tuple[int, str]:
    """``python -m gochat_streams ARGS`` to its end: its exit code and output."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gochat_streams", *args, env={**os.environ, **cluster.env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    async with asyncio.timeout(WAIT_S):
        out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


def _summary(event: dict[str, Any]) -> tuple[str, str, str, str]:
    return event["actor"], event["action"], event["target"], event["outcome"]


async def test_actions_write_chained_events_that_verify_and_a_forged_copy_is_found_out(
    cluster: Cluster, connect: Any
) -> None:
    cluster.env["GOCHAT_OPERATOR_TOKEN"] = OPERATOR_TOKEN
    s = cluster.settings
    cluster.start_worker()
    gw = cluster.start_gateway("gw1")
    worker = f"http://127.0.0.1:{cluster.web_ports['w1']}"

    alice, bob = await connect(gw, "alice"), await connect(gw, "bob")
    await connect(gw, "carol")
    forged, expired = token("mallory")[:-6] + "AAAAAA", token("dave", ttl_s=-60)
    async with aiohttp.ClientSession() as http:
        for headers in ({"Authorization": f"Bearer {forged}"}, {"Authorization": f"Bearer {expired}"}, {}):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(f"{gw}/ws", headers=headers)
            assert refused.value.status == 401
    assert (await history(gw, "carol", "alice:bob"))[0] == 403
    assert (await history(gw, "alice", "alice:bob"))[0] == 200

    await alice.group_action("a1", "g1", "create", member_ids=["bob", "carol"])
    assert [m["message_id"] for m in await bob.messages(1)] == ["a1"]  # bob acts once the group exists
    await alice.group_action("a2", "g1", "kick", invitee_id="carol")
    await bob.group_action("b1", "g1", "kick", invitee_id="alice")  # only the owner may
    await alice.send_to_group("a3", "g1", CONTENT)
    frame = await bob.next_frame()
    while frame.get("message", {}).get("content") != CONTENT:  # a group's messages come in order: a3 is last
        frame = await bob.next_frame()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{worker}/groups/g1/", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}) as r:
            assert r.status == 200
        async with http.get(f"{worker}/groups/g1/") as r:
            assert r.status == 401
        async with http.get(f"{gw}/metrics", headers={"Authorization": f"Bearer {token('alice')}"}) as r:
            assert r.status == 401

    # A dead letter, replayed by an operator's command.
    await produce(s, topics.upstream(s).name, [("x", b"not json")])
    (letter,) = await consume_all(s, [topics.upstream_dlq(s).name], until=lambda records: records)
    position = f"{letter.partition}:{letter.offset}"
    code, out = await _command(cluster, "dead-letters", "--replay", position)
    assert code == 0, out

    operator = getpass.getuser()
    expected = {
        ("alice", "login", "/ws", "success"), ("bob", "login", "/ws", "success"),
        ("carol", "login", "/ws", "success"),
        ("mallory", "login", "/ws", "denied"), ("dave", "login", "/ws", "denied"),
        ("anonymous", "login", "/ws", "denied"),
        ("carol", "history.read", "alice:bob", "denied"), ("alice", "history.read", "alice:bob", "success"),
        ("alice", "group.create", "g1", "success"), ("alice", "group.kick", "g1", "success"),
        ("bob", "group.kick", "g1", "denied"),
        ("operator", "operator.read", "/groups/g1/", "success"),
        ("anonymous", "operator.read", "/groups/g1/", "denied"),
        ("alice", "operator.read", "/metrics", "denied"),
        (operator, "dead_letter.replay", f"{topics.upstream_dlq(s).name}@{position}", "success"),
    }
    audit_topic = topics.audit(s).name

    def events_of(records: list[Any]) -> list[dict[str, Any]]:
        return [json.loads(r.value) for r in records]

    records = await consume_all(s, [audit_topic], until=lambda rs: expected <= {_summary(e) for e in events_of(rs)})
    events = {_summary(e): e for e in events_of(records)}
    assert events[("mallory", "login", "/ws", "denied")]["details"] == {
        "status": 401, "reason": "bad signature", "claimed": True}
    assert events[("dave", "login", "/ws", "denied")]["details"]["reason"] == "token expired"
    assert events[("anonymous", "login", "/ws", "denied")]["details"]["reason"].startswith("missing token")
    assert events[("carol", "history.read", "alice:bob", "denied")]["details"]["status"] == 403
    assert events[("alice", "group.kick", "g1", "success")]["details"] == {
        "message_id": "a2", "subject": "carol", "added": [], "removed": ["carol"]}
    assert events[("bob", "group.kick", "g1", "denied")]["details"]["code"] == "forbidden"
    assert {e["source"] for key, e in events.items() if key[1] in ("login", "history.read", "operator.read")} \
        == {"127.0.0.1"}
    assert {e["source"] for key, e in events.items() if key[1].startswith("group.")} == {"gateway:gw1"}
    assert events[next(k for k in events if k[1] == "dead_letter.replay")]["source"].startswith("cli:")
    # One chain per process: the gateway's, the worker's, the command's; each key is its producer.
    assert {e["service"] for e in events.values()} == {"gateway", "logic", "cli"}
    assert all(r.key.decode() == json.loads(r.value)["producer"] for r in records)

    # No secret, no message text: not in the topic, not in any log; every event is also a log line.
    logs = "\n".join(p.read_text(errors="replace") for p in cluster.stack.log_dir.glob("*.log")) + out
    secrets = [CONTENT, OPERATOR_TOKEN, forged, *(token(u).rsplit(".", 1)[1] for u in ("alice", "bob", "carol"))]
    raw = b"".join(r.value for r in records).decode()
    for secret in secrets:
        assert secret not in raw
    assert CONTENT not in logs and OPERATOR_TOKEN not in logs
    assert all(r.value.decode() in logs for r in records)

    code, out = await _command(cluster, "audit", "verify")
    assert code == 0, out
    assert out.strip().endswith("every chain is whole"), out

    # A copy where the gateway's seq 1 says someone else did it, and the worker's seq 1 is gone.
    stored = await read_records(s, audit_topic)
    by_service: dict[str, list[dict[str, Any]]] = {}
    for r in stored:
        by_service.setdefault(json.loads(r.value)["service"], []).append(json.loads(r.value))
    gateway_chain, logic_chain = by_service["gateway"], by_service["logic"]
    assert len(gateway_chain) >= 3 and len(logic_chain) >= 3
    copy = [{**e, "actor": "nobody"} if e is gateway_chain[1] else e for e in gateway_chain]
    copy += [e for e in logic_chain if e is not logic_chain[1]] + by_service["cli"]
    forged_topic = dataclasses.replace(topics.audit(s), name=f"{s.namespace}forged-audit", partitions=1)
    await topics.ensure_topics(s, [forged_topic])
    await produce(s, forged_topic.name, [(e["producer"], json.dumps(e).encode()) for e in copy])
    code, out = await _command(cluster, "audit", "verify", "--topic", forged_topic.name)
    assert code == 1, out
    lines = {line.split(":", 1)[0]: line for line in out.splitlines() if line.startswith(("ok", "BROKEN"))}
    gateway_line = lines[f"BROKEN {gateway_chain[0]['producer']}"]
    assert gateway_line.endswith("first broken link at 0:1: seq 1 was edited: its hash does not match its content")
    logic_line = lines[f"BROKEN {logic_chain[0]['producer']}"]
    assert logic_line.endswith(f"first broken link at 0:{len(gateway_chain) + 1}: seq 1 missing before seq 2 "
                               "(deleted)")
    assert lines[f"ok     {by_service['cli'][0]['producer']}"]
