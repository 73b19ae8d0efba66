"""im-user-topic -> presence table, im-downstream-topic-{gateway_id}, im-task-topic.

Partition-correct lookups: ``im-user-topic`` is keyed by user id, and the presence
table is written from this same stream, so its changelog has the same partitions and
the worker that owns a user's partition holds that user's presence. A connect and
the messages after it are on one partition, so they are handled in order. No
GlobalTable: every worker would hold every user, and a message could be routed on a
presence change that worker had not yet read.
"""

from __future__ import annotations

from faust import StreamT

from ..app import app
from ..channels import downstream, task, user
from ..codecs import DecodeError, decode_user_event, encode
from ..metrics import messages_routed, reject
from ..models import Delivery, PresenceChange
from ..routing import gateways_for, offline_tasks
from ..tables.presence import presence, with_connection, without_connection


def _apply_presence(change: PresenceChange) -> None:
    current = presence.get(change.user_id)
    if change.online:
        presence[change.user_id] = with_connection(current, change.gateway_id, change.connection_id, change.timestamp)
        return
    remaining = without_connection(current, change.gateway_id, change.connection_id)
    if remaining:
        presence[change.user_id] = remaining
    elif current is not None:
        del presence[change.user_id]


async def _deliver(delivery: Delivery) -> None:
    message = delivery.message
    user_id = message.to_user_id
    assert user_id is not None  # Delivery records are always addressed (routing.deliveries)
    gateways = gateways_for(presence.get(user_id))
    if gateways:
        value = encode(message)
        for gateway_id in gateways:
            await downstream(gateway_id).send(key=user_id, value=value)
        messages_routed.labels("online").inc()
        return
    for offline_task in offline_tasks(message, user_id):
        await task.send(key=offline_task.task_type, value=encode(offline_task))
    messages_routed.labels("offline").inc()


@app.agent(user, name="deliver")
async def deliver(stream: StreamT[bytes]) -> None:
    """im-user-topic -> presence table, im-downstream-topic-{gateway_id}, im-task-topic (offline)."""
    async for raw in stream:
        try:
            event = decode_user_event(raw)
        except DecodeError as exc:
            reject("user", exc.reason, exc.detail)
            continue
        if isinstance(event, PresenceChange):
            _apply_presence(event)
        else:
            await _deliver(event)
