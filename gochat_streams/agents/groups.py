"""im-group-topic -> groups table, im-user-topic, im-task-topic: group changes and group messages.

``im-group-topic`` is keyed by group id, so one worker holds a group's membership and
sees its messages and membership changes in order: a message sent after a kick is
checked against the group without the kicked member.

Small groups fan out here, one Delivery per partition of ``im-user-topic`` their members are on; larger groups
through ``group_fanout`` tasks that the task service expands (agents/tasks.py). Either
way the sender's other sockets get an echo, and the message is persisted once.
"""

from __future__ import annotations

import time

from faust import StreamT

from ..app import app, settings
from ..channels import downstream, group, logic_dead_letters, task, user
from ..codecs import DecodeError, decode_upstream, encode
from ..content_crypto import max_sealed_chars
from ..conversations import Outcome, Refused, apply, target_id
from ..metrics import count_consumed, messages_routed, reject
from ..models import USER_MESSAGE_TYPES, Delivery, Refusal, UpstreamMessage
from ..outbox import Outgoing
from ..routing import deliveries, fanout_tasks, persist_task
from ..tables.groups import groups
from ..topics import DOWNSTREAM_KIND
from ..trace import event_hop


def _refuse(message: UpstreamMessage, refused: Refused) -> list[Outgoing]:
    reject("group", refused.code, f"{message.message_id} from {message.from_user_id}: {refused.detail}")
    refusal = Refusal(user_id=message.from_user_id, message_id=message.message_id, code=refused.code,
                      detail=refused.detail)
    return [Outgoing(downstream(message.gateway_id), message.from_user_id, encode(refusal),
                     {DOWNSTREAM_KIND: b"error"})]


def _fan_out(group_id: str, outcome: Outcome) -> list[Outgoing]:
    message, sender = outcome.message, outcome.message.from_user_id
    out = [Outgoing(task, "persist_message", encode(persist_task(message, outcome.membership)))]
    large = message.message_type in USER_MESSAGE_TYPES and len(outcome.recipients) > settings.small_group_max_members
    if large:
        for fanout in fanout_tasks(message, group_id, outcome.recipients, sender, settings.fanout_batch_size):
            out.append(Outgoing(task, fanout.task_type, encode(fanout)))
    else:
        out += [Outgoing(user, delivery.user_ids[0], encode(delivery))
                for delivery in deliveries(message, (m for m in outcome.recipients if m != sender),
                                               settings.user_partitions)]
    if sender in outcome.recipients:
        out.append(Outgoing(user, sender, encode(Delivery(user_ids=[sender], message=message, echo=True))))
    messages_routed.labels("group_fanout" if large else "group").inc()
    return out


def _audit(message: UpstreamMessage, group_id: str, outcome: Outcome | None, refused: Refused | None) -> None:
    """One audit event per group or conversation administration, applied or refused (audit.py)."""
    action = "conversation.create" if message.message_type == "system_conversation" \
        else f"group.{message.metadata.get('action')}"
    details: dict[str, object] = {"message_id": message.message_id}
    if (subject := message.metadata.get("invitee_id")) is not None:
        details["subject"] = subject
    if outcome is not None and outcome.membership is not None:
        details.update(added=outcome.membership.added, removed=outcome.membership.removed)
    if refused is not None:
        details.update(code=refused.code, reason=refused.detail)
    # The worker sees no client address: the gateway that took the message and stamped its sender.
    app.audit.record(message.from_user_id, action, group_id, "denied" if refused else "success",
                     f"gateway:{message.gateway_id}", **details)


def _on_message(message: UpstreamMessage) -> list[Outgoing]:
    group_id = target_id(message)
    administration = message.message_type not in USER_MESSAGE_TYPES
    try:
        outcome = apply(groups.get(group_id), message)
    except Refused as refused:
        if administration:
            _audit(message, group_id, None, refused)
        return _refuse(message, refused)
    if administration:
        _audit(message, group_id, outcome, None)
        if outcome.state is not None:
            groups[group_id] = outcome.state
        elif group_id in groups:
            del groups[group_id]
    return _fan_out(group_id, outcome)


@app.agent(group, name="route_group")
async def route_group(stream: StreamT[bytes]) -> None:
    """im-group-topic -> groups table; members on im-user-topic or group_fanout tasks; refusals to the sender."""
    async for event in stream.events():
        started = time.perf_counter()
        count_consumed("logic", event.message.topic, settings.namespace)
        try:
            message = decode_upstream(event.value, max_content_chars=settings.max_content_chars,
                                     max_sealed_chars=max_sealed_chars(settings))
        except DecodeError as exc:
            await logic_dead_letters.bury(event, "group", exc.reason, exc.detail)
            continue
        await logic_dead_letters.handle(event, "group", lambda: _on_message(message))
        event_hop("group", message.message_id, event, started, group_id=target_id(message))
