"""``group``: one message to a large group, then one to each of 10 groups at once.

A logic worker, a task worker and 2 gateways start; the members (1,000) connect as WebSocket
clients in this process, half on each gateway, and wait until the worker's presence table
has every one. Groups g0..g9 are created with ``system_group`` ``create`` messages, group
``g{i}`` by member ``i`` with every other member in ``member_ids``: all 10 have the same
members, since 10 x 1,000 sockets would be too many for one client process. Once every
member has every group's creation (and acked it, as each client acks what it gets), and
before each case, until the logic worker has handled every ack (its consumer group has
committed all of ``im-user-topic``), so that a case does not time that backlog:

- ``1 group``: g0's owner sends one text message to it; seconds from the send frame until
  the last of the other members has it.
- ``10 groups``: each group's owner sends one message to it, all at once; seconds until the
  last member of every group has its group's.

Per case: deliveries expected and delivered (each member's first copy), lost, duplicates,
seconds, and via_tasks: how many of its messages the logic worker fanned out through
``group_fanout`` tasks (its ``gochat_messages_routed_total``).

Groups larger than ``GOCHAT_SMALL_GROUP_MAX_MEMBERS`` (200) fan out through ``group_fanout``
tasks of ``GOCHAT_FANOUT_BATCH_SIZE`` (100) members in the task worker. So that a smaller
run (``--smoke``: 20 members) takes that path too, it lowers both to keep about 10 tasks a
message. The gateways' flood limits are raised as for ``e2e`` (common.GATEWAY_LOAD_ENV).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from gochat_streams import topics
from gochat_streams.settings import Settings

from .common import (GATEWAY_LOAD_ENV, WAIT_S, Bench, Clients, Frame, Result, Service, scrape, settle,
                     start_chat_services, wait_consumed, wait_online)

GATEWAYS = ["gw0", "gw1"]
#: The logic worker's count of group messages it fanned out through group_fanout tasks.
FANNED_OUT = 'gochat_messages_routed_total{path="group_fanout"}'
#: A wait for deliveries ends when none has arrived for this long: the rest is not coming.
IDLE_S = 30.0


class Receipts:
    """Per message: how many members got it, when the last of them did, and the copies."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, str]] = set()
        self.members: Counter[str] = Counter()
        self.copies: Counter[str] = Counter()
        self.last_ns: dict[str, int] = {}
        self.errors: Counter[str] = Counter()

    def on_frame(self, user: str, frame: Frame) -> None:
        if frame["type"] == "message":
            message_id = frame["message"]["message_id"]
            if (message_id, user) in self.seen:
                self.copies[message_id] += 1
                return
            self.seen.add((message_id, user))
            self.members[message_id] += 1
            self.last_ns[message_id] = time.perf_counter_ns()
        elif frame["type"] == "error":
            self.errors[frame["code"]] += 1

    def count(self, message_ids: list[str]) -> int:
        return sum(self.members[message_id] for message_id in message_ids)


def _fanout_env(members: int) -> dict[str, str]:
    """Settings that send a group of ``members`` through group_fanout tasks, about 10 a message."""
    default = Settings.model_fields["small_group_max_members"].default
    if members > default:
        return {}
    return {"GOCHAT_SMALL_GROUP_MAX_MEMBERS": str(max(1, members // 2)),
            "GOCHAT_FANOUT_BATCH_SIZE": str(max(1, members // 10))}


async def run_group(bench: Bench, members: int, groups: int) -> Result:
    fanout = _fanout_env(members)
    worker, _, gateways = await start_chat_services(bench, GATEWAYS, {**GATEWAY_LOAD_ENV, **fanout})
    users = [f"u{i:05d}" for i in range(members)]
    group_ids = [f"g{i}" for i in range(groups)]
    receipts = Receipts()
    rows: list[dict[str, Any]] = []
    async with Clients(receipts.on_frame) as clients:
        await clients.connect(gateways, users)
        await wait_online(worker, users)
        creates = [f"create-{g}" for g in group_ids]
        for i, group_id in enumerate(group_ids):
            await clients.send(users[i], {
                "message_id": f"create-{group_id}", "to_user_id": None, "conversation_id": group_id, "content": "",
                "message_type": "system_group",
                "metadata": {"action": "create", "group_id": group_id,
                             "member_ids": [u for u in users if u != users[i]]}})
        created = await settle(lambda: receipts.count(creates), groups * (members - 1), WAIT_S, idle_s=IDLE_S)
        if created < groups * (members - 1):
            raise RuntimeError(f"groups not created: {created} of {groups * (members - 1)} creations arrived "
                               f"(errors {dict(receipts.errors)}); see {bench.stack.log_dir}")
        for case, targets in (("1 group", group_ids[:1]), (f"{groups} groups", group_ids)):
            # From a quiet worker: the members' acks of what came before (10,000 after the
            # creations) are handled first, not counted in the case.
            await wait_consumed(bench.settings, topics.logic_group(bench.settings).group_id,
                                topics.user(bench.settings).name)
            with bench.measured(worker, *gateways) as cpu:
                row = await _case(worker, clients, receipts, users, case, targets, members)
            rows.append({**row, "worker_cpu_s": cpu[worker.name]})
    extra = {"members": members, "groups": groups, "gateways": len(GATEWAYS), "fanout_env": fanout,
             "errors": dict(receipts.errors), "dropped_sockets": clients.dropped}
    return Result(rows, extra)


async def _case(worker: Service, clients: Clients, receipts: Receipts, users: list[str], case: str,
                group_ids: list[str], members: int) -> dict[str, Any]:
    """One message to each of ``group_ids`` at once, from its owner; until every other member has it."""
    fanned_out = (await scrape(worker)).get(FANNED_OUT, 0.0)
    ids = [f"{case.replace(' ', '-')}-{group_id}" for group_id in group_ids]
    expected = len(group_ids) * (members - 1)
    started = time.perf_counter_ns()
    for i, (message_id, group_id) in enumerate(zip(ids, group_ids)):
        await clients.send(users[i], {
            "message_id": message_id, "to_user_id": None, "conversation_id": group_id,
            "content": f"hello, {group_id}", "message_type": "text", "metadata": {}})
    delivered = await settle(lambda: receipts.count(ids), expected, WAIT_S, idle_s=IDLE_S)
    last = max((receipts.last_ns[i] for i in ids if i in receipts.last_ns), default=started)
    return {"scenario": "group", "case": case, "groups": len(group_ids), "members": members, "expected": expected,
            "delivered": delivered, "lost": expected - delivered, "duplicates": sum(receipts.copies[i] for i in ids),
            "seconds": round((last - started) / 1e9, 3),
            "via_tasks": int((await scrape(worker)).get(FANNED_OUT, 0.0) - fanned_out)}
