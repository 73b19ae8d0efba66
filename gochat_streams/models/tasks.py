"""``im-task-topic`` envelopes: persist_message, offline_push, group_fanout."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, TypeAdapter

from .common import PROTOCOL_VERSION, Id, Model, TimestampMs, UserId, Version
from .messages import DownstreamMessage, MessageType

TaskType = Literal["persist_message", "offline_push", "group_fanout"]


class MembershipChange(Model):
    """Whose membership of a group or conversation a message changed, as the logic service decided it."""

    added: list[UserId] = Field(default_factory=list)
    removed: list[UserId] = Field(default_factory=list)


class PersistMessagePayload(Model):
    message_id: Id
    conversation_id: Id
    from_user_id: UserId
    to_user_id: UserId | None = None
    content: str
    message_type: MessageType
    metadata: dict[str, Any] = Field(default_factory=dict)
    #: When the message was sent (its ``timestamp``); not in the spec's example, which
    #: predates history ordering. Optional so that the spec's example still validates.
    timestamp: TimestampMs | None = None
    #: Not in the spec: the membership change of a group or conversation message, which
    #: the store applies as given (conversations.py decides it). None: no change.
    membership: MembershipChange | None = None


class OfflinePushPayload(Model):
    user_id: UserId
    message_id: Id
    title: str
    #: The preview text, or the message's sealed text (content_crypto.py), which the pusher
    #: opens with the two fields below: the logic service cannot read it.
    content: str
    push_type: Literal["message"] = "message"
    #: Not in the spec: the sender and conversation of a sealed text, its associated data.
    from_user_id: UserId | None = None
    conversation_id: Id | None = None


class GroupFanoutPayload(Model):
    """One batch of a large group's fan-out.

    The spec's example names the group and message only; the task service has no view
    of group membership or of the message, so each task also carries its batch of
    ``member_ids`` (at most ``batch_size``) and the ``message``. A task without them
    cannot be expanded and is refused.
    """

    group_id: Id
    message_id: Id
    exclude_user_ids: list[UserId] = Field(default_factory=list)
    batch_size: int = Field(100, ge=1, le=10_000)
    member_ids: list[UserId] | None = None
    message: DownstreamMessage | None = None


class _Task(Model):
    task_id: Id
    timestamp: TimestampMs
    retry_count: int = Field(0, ge=0)
    version: Version = PROTOCOL_VERSION


class PersistMessageTask(_Task):
    task_type: Literal["persist_message"] = "persist_message"
    payload: PersistMessagePayload


class OfflinePushTask(_Task):
    task_type: Literal["offline_push"] = "offline_push"
    payload: OfflinePushPayload


class GroupFanoutTask(_Task):
    task_type: Literal["group_fanout"] = "group_fanout"
    payload: GroupFanoutPayload


Task = Annotated[Union[PersistMessageTask, OfflinePushTask, GroupFanoutTask], Field(discriminator="task_type")]
TASK_ADAPTER: TypeAdapter[Task] = TypeAdapter(Task)
