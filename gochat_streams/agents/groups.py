"""im-group-topic -> groups table, im-user-topic, im-task-topic: group changes and group messages.

``im-group-topic`` is keyed by group id, so one worker holds a group's membership and
sees its messages and membership changes in order: a message sent after a kick is
checked against the group without the kicked member.

Small groups fan out here, one Delivery per member on ``im-user-topic``; larger groups
through ``group_fanout`` tasks that the task service expands (agents/tasks.py). Either
way the sender's other sockets get an echo, and the message is persisted once.
"""

from __future__ import annotations

from faust import StreamT

from ..app import app, settings
from ..channels import downstream, group, task, user
from ..codecs import DecodeError, decode_upstream, encode
from ..groups import Outcome, Refused, apply, target_id
from ..metrics import messages_routed, reject
from ..models import USER_MESSAGE_TYPES, Delivery, Refusal, UpstreamMessage
from ..routing import fanout_tasks, persist_task
from ..tables.groups import groups
from ..topics import DOWNSTREAM_KIND


async def _refuse(message: UpstreamMessage, refused: Refused) -> None:
    reject("group", refused.code, f"{message.message_id} from {message.from_user_id}: {refused.detail}")
    refusal = Refusal(user_id=message.from_user_id, message_id=message.message_id, code=refused.code,
                      detail=refused.detail)
    await downstream(message.gateway_id).send(
        key=message.from_user_id, value=encode(refusal), headers={DOWNSTREAM_KIND: b"error"}
    )


async def _fan_out(group_id: str, outcome: Outcome) -> None:
    message, sender = outcome.message, outcome.message.from_user_id
    large = message.message_type in USER_MESSAGE_TYPES and len(outcome.recipients) > settings.small_group_max_members
    if large:
        for fanout in fanout_tasks(message, group_id, outcome.recipients, sender, settings.fanout_batch_size):
            await task.send(key=fanout.task_type, value=encode(fanout))
    else:
        for member in outcome.recipients:
            if member != sender:
                await user.send(key=member, value=encode(Delivery(user_id=member, message=message)))
    if sender in outcome.recipients:
        await user.send(key=sender, value=encode(Delivery(user_id=sender, message=message, echo=True)))
    messages_routed.labels("group_fanout" if large else "group").inc()


@app.agent(group, name="route_group")
async def route_group(stream: StreamT[bytes]) -> None:
    """im-group-topic -> groups table; members on im-user-topic or group_fanout tasks; refusals to the sender."""
    async for raw in stream:
        try:
            message = decode_upstream(raw, max_content_chars=settings.max_content_chars)
        except DecodeError as exc:
            reject("group", exc.reason, exc.detail)
            continue
        group_id = target_id(message)
        try:
            outcome = apply(groups.get(group_id), message)
        except Refused as refused:
            await _refuse(message, refused)
            continue
        if message.message_type not in USER_MESSAGE_TYPES:
            if outcome.state is None:
                if group_id in groups:
                    del groups[group_id]
            else:
                groups[group_id] = outcome.state
        await task.send(key="persist_message", value=encode(persist_task(outcome.message)))
        await _fan_out(group_id, outcome)
