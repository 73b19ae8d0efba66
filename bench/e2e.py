"""``e2e``: client to client through 2 gateways, at fixed offered loads.

A logic worker, a task worker and 2 gateways start; the users (1,000) connect as WebSocket
clients in this process, half on each gateway, and the clock waits until the worker's
presence table has every one (its ``/users/{id}/`` view). Then, for each offered load
(100, 250, 500, 1,000, 2,000, 4,000 msgs/s, 30 s each, up to the first one not kept up
with: a higher load would only grow the backlog), a scheduler sends every 10 ms the messages due so
far: each a ``send`` frame from a random user to a random other user, on either gateway,
whose content is its send time (``perf_counter_ns``: one process sends and receives, so
latency is receive - send, client to client). Every client acks each message it gets, as a
real client does.

Per step: offered and achieved send rate, sent, accepted (the gateway's acks), refused (its
error frames), delivered (within the drain wait, ``--drain-seconds`` after the step's last
send; the next step starts then), late (arrived after that, before the run ended), lost
(never arrived: sent - refused - delivered - late, after a last wait that ends when nothing
has arrived for 10 s), duplicates, latency percentiles over all of the step's messages, and
the CPU time a message of the logic worker, the task worker, the gateways and the broker over the step (the
steadier figure on a shared machine).
A load is kept up with when every message arrived within the drain wait, sent at >= 95% of
the offered rate, and held when also p99 < 100 ms; the highest one held is printed and in
the JSON.

The gateways' flood protection is raised (common.GATEWAY_LOAD_ENV), so that the bench's load
is measured rather than refused: ``GOCHAT_MAX_FRAMES_PER_S``/``_BURST`` (50/s, 200 a socket:
a random sender bursts past the average), ``GOCHAT_MAX_UNSENT``
(10,000 sends waiting for the broker are refused at once: a slow broker would show as
refusals instead of latency) and ``GOCHAT_WS_HEARTBEAT_S`` (30 s: a socket whose pong is 15 s
late is closed and its user goes offline; this process, loaded on 2 cores, may read late).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .common import (GATEWAY_LOAD_ENV, WAIT_S, Bench, Clients, Frame, Result, Service, settle,
                     start_chat_services, wait_online)

GATEWAYS = ["gw0", "gw1"]
#: The scheduler's period: each tick sends what is due by then.
TICK_S = 0.01
#: A load is held at this latency, with nothing late or lost...
HELD_P99_MS = 100.0
#: ...sent at this share of the offered rate at least (else the client was the bottleneck).
HELD_SEND_RATIO = 0.95
#: The last wait ends when nothing has arrived for this long.
IDLE_S = 10.0


@dataclass
class Step:
    """One offered load and what became of its messages."""

    offered: int
    seconds: float
    sent: int = 0
    send_s: float = 0.0
    accepted: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    delivered: int = 0
    late: int = 0
    duplicates: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    drained: bool = False
    #: CPU seconds of the logic worker, the task worker, the gateways and the broker over the step.
    cpu_s: dict[str, float] = field(default_factory=dict)

    @property
    def arrived(self) -> int:
        """Messages whose fate is known: delivered (in time or late) or refused."""
        return self.delivered + self.late + sum(self.refused.values())

    def row(self) -> dict[str, Any]:
        refused = sum(self.refused.values())
        ms = sorted(ns / 1e6 for ns in self.latencies_ns)
        sent_per_s = round(self.sent / self.send_s, 1) if self.send_s else 0.0
        row: dict[str, Any] = {
            "scenario": "e2e", "offered_per_s": self.offered, "seconds": self.seconds, "sent": self.sent,
            "sent_per_s": sent_per_s, "accepted": self.accepted, "refused": refused, "delivered": self.delivered,
            "late": self.late, "lost": self.sent - refused - self.delivered - self.late,
            "duplicates": self.duplicates,
            **{f"p{q}_ms": _percentile(ms, q) for q in (50, 95, 99)}, "max_ms": round(ms[-1], 1) if ms else None,
        }
        row.update({f"{name}_cpu_us_per_msg": round(cpu / self.sent * 1e6) if self.sent else None
                    for name, cpu in self.cpu_s.items()})
        row["kept_up"] = self.delivered == self.sent and sent_per_s >= HELD_SEND_RATIO * self.offered
        row["held"] = row["kept_up"] and row["p99_ms"] is not None and row["p99_ms"] < HELD_P99_MS
        return row


def _percentile(sorted_ms: list[float], q: int) -> float | None:
    """Nearest rank."""
    if not sorted_ms:
        return None
    return round(sorted_ms[max(0, math.ceil(q / 100 * len(sorted_ms)) - 1)], 1)


class Tracker:
    """Attributes each frame the clients get to its step. Message ids are ``e{step}.{n}``."""

    def __init__(self) -> None:
        self.steps: list[Step] = []
        self.received: set[str] = set()
        #: Error frames without a message_id (a rate limit says none).
        self.unattributed: Counter[str] = Counter()

    def on_frame(self, user: str, frame: Frame) -> None:
        kind = frame["type"]
        if kind == "message":
            at = time.perf_counter_ns()
            message = frame["message"]
            step = self._step(message["message_id"])
            if message["message_id"] in self.received:
                step.duplicates += 1
                return
            self.received.add(message["message_id"])
            step.latencies_ns.append(at - int(message["content"]))
            if step.drained:
                step.late += 1
            else:
                step.delivered += 1
        elif kind == "ack":
            self._step(frame["message_id"]).accepted += 1
        elif kind == "error":
            if frame.get("message_id"):
                self._step(frame["message_id"]).refused[frame["code"]] += 1
            else:
                self.unattributed[frame["code"]] += 1

    def _step(self, message_id: str) -> Step:
        return self.steps[int(message_id[1:message_id.index(".")])]


async def _offer(clients: Clients, users: list[str], rng: random.Random, index: int, step: Step) -> None:
    """Send ``step.offered`` messages a second for ``step.seconds``, in a burst per tick."""
    total = round(step.offered * step.seconds)
    started = time.perf_counter()
    while step.sent < total:
        due = min(total, int((time.perf_counter() - started) * step.offered) + 1)
        while step.sent < due:
            sender, recipient = rng.sample(users, 2)
            await clients.send(sender, {
                "message_id": f"e{index}.{step.sent}", "to_user_id": recipient,
                "conversation_id": f"c_{sender}_{recipient}", "content": str(time.perf_counter_ns()),
                "message_type": "text", "metadata": {}, "timestamp": time.time_ns() // 1_000_000,
            })
            step.sent += 1
        await asyncio.sleep(TICK_S)
    step.send_s = time.perf_counter() - started


def _cpu_s(worker: Service, tasks: Service, gateways: list[Service], brokers: list[Service]) -> dict[str, float]:
    """CPU seconds so far of the logic worker, the task worker, the gateways together and the
    broker's nodes together."""
    return {"worker": worker.cpu_s(), "tasks": tasks.cpu_s(), "gateways": sum(gw.cpu_s() for gw in gateways),
            "broker": sum(node.cpu_s() for node in brokers)}


async def run_e2e(bench: Bench, users: int, steps: list[int], step_s: float, drain_s: float) -> Result:
    worker, tasks, gateways = await start_chat_services(bench, GATEWAYS, GATEWAY_LOAD_ENV)
    names = [f"u{i:05d}" for i in range(users)]
    tracker = Tracker()
    async with Clients(tracker.on_frame) as clients:
        await clients.connect(gateways, names)
        await wait_online(worker, names)
        rng = random.Random(6)  # the same traffic every run
        with bench.measured(worker, tasks, *gateways):
            for index, offered in enumerate(steps):
                step = Step(offered, step_s)
                tracker.steps.append(step)
                before = _cpu_s(worker, tasks, gateways, bench.brokers())
                await _offer(clients, names, rng, index, step)
                await settle(lambda: step.arrived, step.sent, drain_s)
                step.drained = True
                step.cpu_s = {name: round(cpu - before[name], 2)
                              for name, cpu in _cpu_s(worker, tasks, gateways, bench.brokers()).items()}
                if not step.row()["kept_up"]:
                    break  # saturated: a higher load cannot be held, and its backlog would only grow
        await settle(lambda: sum(st.arrived for st in tracker.steps), sum(st.sent for st in tracker.steps), WAIT_S,
                     idle_s=IDLE_S)
        dropped = clients.dropped
    rows = [step.row() for step in tracker.steps]
    held = max((row["offered_per_s"] for row in rows if row["held"]), default=None)
    summary = (f"highest load held (p99 < {HELD_P99_MS:g} ms, nothing late or lost): "
               + (f"{held:,} msgs/s" if held is not None else "none of the offered loads"))
    extra = {"users": users, "gateways": len(GATEWAYS), "drain_s": drain_s, "highest_held_per_s": held,
             "dropped_sockets": dropped, "unattributed_errors": dict(tracker.unattributed),
             "refused_by_code": {str(r["offered_per_s"]): dict(st.refused) for r, st in zip(rows, tracker.steps)},
             "gateway_env": GATEWAY_LOAD_ENV}
    return Result(rows, extra, summary)
