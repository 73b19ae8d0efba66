"""im-user-topic -> presence and inbox tables, im-downstream-topic-{gateway_id}, im-task-topic.

Partition-correct lookups: ``im-user-topic`` is keyed by user id, and the presence and
inbox tables are written from this same stream, so their changelogs have the same
partitions and the worker that owns a user's partition holds that user's state. A
user's connects, messages, acks and bounces are on one partition, handled in order.
No GlobalTable: every worker would hold every user, and a message could be routed on
a presence change that worker had not yet read.

Group messages: a Delivery names every member of the group on its partition, so a
1,000-member group is about 10 events here, not 1,000. Each member still gets an inbox
entry, a mark and a cursor write, in member order; the online ones are pushed in one
record per gateway and downstream partition, which names them with their seqs
(topics.DOWNSTREAM_RECIPIENTS), the offline ones each get a push task. A record naming
a user of another partition is dead-lettered: that user's state is not here.

Reconnect sync: each message for a user gets the next number of the user's inbox and
stays there until the user acknowledges it. When a socket connects, the pending
entries go to that socket alone, in order, and every later message goes to all the
user's sockets: as both happen in partition order, the new socket misses nothing and
gets nothing twice.

Dedup: a message (sender, message_id) delivered to a user within ``dedup_ttl_s`` is
not kept again, whether a client resent it or a crash replayed it (tables/dedup.py).
If its inbox entry is still pending, it is pushed again with the same seq: a worker
killed after keeping a message may not have pushed it, and Faust has no transaction
to tie the table's changelog to the push. The gateway drops the copy on a socket that
already has it.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

from faust import StreamT

from ..app import app, settings
from ..channels import downstream, logic_dead_letters, task, user
from ..codecs import DecodeError, decode_user_event, encode, encode_recipients
from ..metrics import count_consumed, messages_deduplicated, messages_routed
from ..models import Ack, Acked, Bounce, Delivery, DownstreamMessage, PresenceChange, UserEvent, now_ms
from ..outbox import Outgoing
from ..routing import by_partition, gateways_for, offline_push_task, partition_of
from ..tables.dedup import delivered_mark, listed, mark_key, remember
from ..tables.inbox import Cursor, cursor_key, entry_key, inbox
from ..tables.presence import presence, with_connection, without_connection, without_stale
from ..topics import DOWNSTREAM_CONNECTION, DOWNSTREAM_RECIPIENTS
from ..trace import event_hop, sampled


_routed_online = messages_routed.labels("online")


def _push(gateway_id: str, user_id: str, value: bytes, headers: Mapping[str, bytes] | None = None) -> Outgoing:
    return Outgoing(downstream(gateway_id), user_id, value, headers)


def _store_presence(user_id: str, connections: dict[str, dict[str, int]]) -> None:
    if connections:
        presence[user_id] = connections
    elif user_id in presence:
        del presence[user_id]


def _on_presence(change: PresenceChange) -> list[Outgoing]:
    current = presence.get(change.user_id)
    if not change.online:
        _store_presence(change.user_id, without_connection(current, change.gateway_id, change.connection_id))
        return []
    presence[change.user_id] = with_connection(current, change.gateway_id, change.connection_id, change.timestamp)
    return _sync(change)


def _sync(change: PresenceChange) -> list[Outgoing]:
    """The user's pending inbox entries, oldest first, for the socket that just connected."""
    cursor: Cursor | None = inbox.get(cursor_key(change.user_id))
    if cursor is None:
        return []
    out = []
    for seq in range(cursor["floor"], cursor["next"]):
        entry = inbox.get(entry_key(change.user_id, seq))
        if entry is not None:
            headers = {DOWNSTREAM_RECIPIENTS: encode_recipients({change.user_id: seq}),
                       DOWNSTREAM_CONNECTION: change.connection_id.encode()}
            out.append(_push(change.gateway_id, change.user_id, _encode_entry(entry), headers))
    if out:
        messages_routed.labels("sync").inc(len(out))
    return out


def _encode_entry(entry: Mapping[str, Any]) -> bytes:
    return encode(DownstreamMessage.model_construct(**entry))


def _keep(user_id: str, entry: dict[str, Any], mark: str, now: int, ttl: int) -> int:
    """Put the message (``entry``) in the user's inbox and mark it delivered; its sequence number.

    Written in this order (entry, mark, cursor), which the changelog keeps: a mark
    found after a crash always has its entry, and _kept mends the cursor.
    """
    cursor: Cursor = inbox.get(cursor_key(user_id)) or {"next": 1, "floor": 1, "log": None}
    seq = cursor["next"]
    inbox[entry_key(user_id, seq)] = entry
    log = remember(inbox, user_id, cursor["log"], mark, seq, now, ttl)
    floor = cursor["floor"]
    while seq + 1 - floor > settings.inbox_max_pending:
        # Oldest first out: the message stays in the store's history.
        if (stale := entry_key(user_id, floor)) in inbox:
            del inbox[stale]
        floor += 1
    inbox[cursor_key(user_id)] = {"next": seq + 1, "floor": floor, "log": log}
    return seq


def _kept(user_id: str, message: DownstreamMessage, entry: dict[str, Any], now: int, ttl: int) -> int | None:
    """The message's sequence number in the user's inbox, kept now unless it was before
    (dedup); None if it was and is no longer pending: nothing to push."""
    key = mark_key(user_id, message.from_user_id, message.message_id)
    mark = delivered_mark(inbox, key, now, ttl)
    if mark is None:
        return _keep(user_id, entry, key, now, ttl)
    messages_deduplicated.labels("logic").inc()
    seq: int = mark["seq"]
    cursor: Cursor | None = inbox.get(cursor_key(user_id))
    if cursor is None or cursor["next"] <= seq:  # killed between mark and cursor
        log = listed(inbox, user_id, cursor["log"] if cursor else None, key, now, ttl)
        inbox[cursor_key(user_id)] = {"next": seq + 1, "floor": cursor["floor"] if cursor else 1, "log": log}
    pending = inbox.get(entry_key(user_id, seq))
    if pending is None or pending["message_id"] != message.message_id:
        return None  # acknowledged, or dropped from a full inbox
    return seq


def _on_delivery(delivery: Delivery) -> list[Outgoing]:
    message = delivery.message
    if delivery.echo:
        # The sender's own message, for their other sockets: nothing to sync or push.
        value = encode(message)
        return [_push(gateway_id, user_id, value)
                for user_id in delivery.user_ids for gateway_id in gateways_for(presence.get(user_id))]
    now, ttl = now_ms(), settings.dedup_ttl_s * 1000
    entry = message.model_dump(mode="json")
    online: defaultdict[str, dict[str, int]] = defaultdict(dict)  # gateway -> {user: seq}
    online_users = 0
    out = []
    for user_id in delivery.user_ids:
        seq = _kept(user_id, message, entry, now, ttl)
        if seq is None:
            continue
        gateways = gateways_for(presence.get(user_id))
        for gateway_id in gateways:
            online[gateway_id][user_id] = seq
        if gateways:
            online_users += 1
        else:
            out.append(_offline(user_id, message))
    if online_users:
        _routed_online.inc(online_users)
    if online:
        value = encode(message)
        for gateway_id, seqs in online.items():
            for users in by_partition(seqs, settings.downstream_partitions):
                out.append(_push(gateway_id, users[0], value,
                                 {DOWNSTREAM_RECIPIENTS: encode_recipients({user: seqs[user] for user in users})}))
    return out


def _offline(user_id: str, message: DownstreamMessage) -> Outgoing:
    push = offline_push_task(message, user_id)
    messages_routed.labels("offline").inc()
    return Outgoing(task, push.task_type, encode(push))


def _on_ack(ack: Ack) -> list[Outgoing]:
    for acked in ack.entries:
        _apply(acked)
    return []


def _apply(acked: Acked) -> None:
    key = entry_key(acked.user_id, acked.seq)
    entry = inbox.get(key)
    if entry is None or entry["message_id"] != acked.message_id:
        return  # acknowledged before, or dropped from a full inbox
    del inbox[key]
    cursor: Cursor | None = inbox.get(cursor_key(acked.user_id))
    if cursor is None or acked.seq != cursor["floor"]:
        return
    floor = cursor["floor"] + 1
    while floor < cursor["next"] and entry_key(acked.user_id, floor) not in inbox:
        floor += 1
    inbox[cursor_key(acked.user_id)] = {**cursor, "floor": floor}


def _on_bounce(bounce: Bounce) -> list[Outgoing]:
    """The gateway no longer has the user: forget its stale sockets; if none are left, push.

    Other gateways of the user got the message when it was routed, or, if the user
    connected there since, in that connect's sync: nothing to resend.
    """
    connections = without_stale(presence.get(bounce.user_id), bounce.gateway_id, bounce.timestamp)
    _store_presence(bounce.user_id, connections)
    entry = inbox.get(entry_key(bounce.user_id, bounce.seq))
    if entry is None or entry["message_id"] != bounce.message_id or gateways_for(connections):
        return []
    return [_offline(bounce.user_id, DownstreamMessage.model_construct(**entry))]


_HANDLERS: dict[type, Callable[[Any], list[Outgoing]]] = {
    PresenceChange: _on_presence, Delivery: _on_delivery, Ack: _on_ack, Bounce: _on_bounce,
}


@app.agent(user, name="deliver")
async def deliver(stream: StreamT[bytes]) -> None:
    """im-user-topic -> presence and inbox tables; im-downstream-topic-{gateway_id}; offline pushes."""
    async for event in stream.events():
        started = time.perf_counter()
        count_consumed("logic", event.message.topic, settings.namespace)
        try:
            user_event = decode_user_event(event.value)
        except DecodeError as exc:
            await logic_dead_letters.bury(event, "user", exc.reason, exc.detail)
            continue
        if (elsewhere := _elsewhere(user_event, event.message.partition)) is not None:
            await logic_dead_letters.bury(event, "user", "wrong_partition",
                                          f"{elsewhere} is not on partition {event.message.partition}")
            continue
        sent = await logic_dead_letters.handle(event, "user", lambda: _HANDLERS[type(user_event)](user_event))
        if isinstance(user_event, Delivery) and not user_event.echo and sampled(user_event.message.message_id):
            event_hop("deliver", user_event.message.message_id, event, started, user_ids=user_event.user_ids,
                      to=[o.topic.get_topic_name() for o in sent])


def _elsewhere(user_event: UserEvent, partition: int) -> str | None:
    """A user of the record whose state is not on its partition, or None.

    Each user's presence and inbox live on that user's partition; a record keyed by one
    user but naming another (a producer's bug) would write state no worker reads.
    """
    return next((u for u in user_event.users if partition_of(u, settings.user_partitions) != partition), None)
