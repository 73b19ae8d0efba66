"""Routing decisions as plain functions: no Faust, no I/O, unit-tested on their own."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from aiokafka.partitioner import murmur2

from .models import (
    MAX_DELIVERY_USERS,
    USER_MESSAGE_TYPES,
    Delivery,
    DownstreamMessage,
    GroupFanoutPayload,
    GroupFanoutTask,
    MembershipChange,
    OfflinePushPayload,
    OfflinePushTask,
    PersistMessagePayload,
    PersistMessageTask,
    UpstreamMessage,
    now_ms,
)
from .models.messages import is_sealed

#: What an offline push says for a message that is not text.
_PUSH_PREVIEWS = {"image": "[图片]", "file": "[文件]", "location": "[位置]"}
_PUSH_PREVIEW_CHARS = 100


def addressing_error(message: UpstreamMessage) -> str | None:
    """Why a message's addressing is inconsistent, or None.

    Chat messages name a user (single chat) or, with ``to_user_id`` null, a group or
    conversation in ``conversation_id``. System messages name their group or
    conversation in the metadata, which must be the ``conversation_id`` too.
    """
    if message.message_type in USER_MESSAGE_TYPES:
        return None
    if message.to_user_id is not None:
        return f"{message.message_type} messages go to a group or conversation: to_user_id must be null"
    key = "group_id" if message.message_type == "system_group" else "conversation_id"
    if message.metadata.get(key) != message.conversation_id:
        return f"conversation_id must equal metadata.{key}"
    return None


def is_single_chat(message: UpstreamMessage) -> bool:
    return message.to_user_id is not None


def gateways_for(connections: Mapping[str, Mapping[str, int]] | None) -> list[str]:
    """The gateways that hold at least one of a user's sockets, in a stable order."""
    return sorted(gw for gw, conns in (connections or {}).items() if conns)


def partition_of(key: str, partitions: int) -> int:
    """The partition of a record keyed ``key``: what the producers' DefaultPartitioner picks
    (murmur2, as Kafka's Java client), given the topic's ``partitions``."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def by_partition(keys: Iterable[str], partitions: int) -> list[list[str]]:
    """``keys`` grouped by :func:`partition_of`, in their order, each once.

    A record keyed by the first of a group lands on the partition of every key in it:
    one record can stand for each of them without leaving any key's order.
    """
    groups: dict[int, list[str]] = {}
    for key in dict.fromkeys(keys):
        groups.setdefault(partition_of(key, partitions), []).append(key)
    return list(groups.values())


def deliveries(message: DownstreamMessage, members: Iterable[str], partitions: int) -> list[Delivery]:
    """A group message for ``members``: one Delivery per partition of ``im-user-topic`` they are on."""
    return [Delivery(user_ids=users[start:start + MAX_DELIVERY_USERS], message=message)
            for users in by_partition(members, partitions) for start in range(0, len(users), MAX_DELIVERY_USERS)]


def push_preview(from_user_id: str, message_type: str, content: str) -> str:
    """An offline push's text: ``sender: text``, or the kind of a message that is not text."""
    text = _PUSH_PREVIEWS.get(message_type, content)
    if len(text) > _PUSH_PREVIEW_CHARS:
        text = text[: _PUSH_PREVIEW_CHARS - 1] + "…"
    return f"{from_user_id}: {text}"


def persist_task(message: DownstreamMessage, membership: MembershipChange | None = None) -> PersistMessageTask:
    """Every message is persisted once, for history, whoever is online, with the membership
    change the logic service decided for it (the store applies it as given)."""
    return PersistMessageTask(
        task_id=f"persist:{message.message_id}",
        timestamp=now_ms(),
        payload=PersistMessagePayload(
            message_id=message.message_id,
            conversation_id=message.conversation_id,
            from_user_id=message.from_user_id,
            to_user_id=message.to_user_id,
            content=message.content,
            message_type=message.message_type,
            metadata=message.metadata,
            timestamp=message.timestamp,
            membership=membership,
        ),
    )


def offline_push_task(message: DownstreamMessage, user_id: str) -> OfflinePushTask:
    """The spec's offline path: the message is already persisted; notify the user.

    A sealed text goes as it is, for the pusher to open (push.py); other kinds need no content.
    """
    payload = OfflinePushPayload(user_id=user_id, message_id=message.message_id, title="新消息",
                                 content=push_preview(message.from_user_id, message.message_type, message.content))
    if message.message_type == "text" and is_sealed(message.message_type, message.content):
        payload = payload.model_copy(update={"content": message.content, "from_user_id": message.from_user_id,
                                             "conversation_id": message.conversation_id})
    return OfflinePushTask(task_id=f"push:{message.message_id}:{user_id}", timestamp=now_ms(), payload=payload)


def fanout_tasks(message: DownstreamMessage, group_id: str, recipients: list[str], sender: str,
                 batch_size: int) -> list[GroupFanoutTask]:
    """A large group's message as ``group_fanout`` tasks of at most ``batch_size`` members, sender excluded."""
    members = [m for m in recipients if m != sender]
    ts = now_ms()
    return [
        GroupFanoutTask(
            task_id=f"fanout:{message.message_id}:{start // batch_size}",
            timestamp=ts,
            payload=GroupFanoutPayload(
                group_id=group_id,
                message_id=message.message_id,
                exclude_user_ids=[sender],
                batch_size=batch_size,
                member_ids=members[start:start + batch_size],
                message=message,
            ),
        )
        for start in range(0, len(members), batch_size)
    ]
