"""Routing decisions as plain functions: no Faust, no I/O, unit-tested on their own."""

from __future__ import annotations

from collections.abc import Mapping

from .models import (
    Delivery,
    DownstreamMessage,
    OfflinePushPayload,
    OfflinePushTask,
    PersistMessagePayload,
    PersistMessageTask,
    UpstreamMessage,
    now_ms,
)

#: What an offline push says for a message that is not text.
_PUSH_PREVIEWS = {"image": "[图片]", "file": "[文件]", "location": "[位置]"}
_PUSH_PREVIEW_CHARS = 100


class Unroutable(ValueError):
    """A message that is valid but has nowhere to go (e.g. no recipient)."""


def deliveries(message: UpstreamMessage) -> list[tuple[str, Delivery]]:
    """Upstream message -> ``(user_id, Delivery)`` records for ``im-user-topic``.

    Single chat: one delivery, keyed by the recipient.
    """
    if message.to_user_id is None:
        raise Unroutable("to_user_id is required for a single-chat message")
    return [(message.to_user_id, Delivery(message=message.to_downstream()))]


def gateways_for(connections: Mapping[str, Mapping[str, int]] | None) -> list[str]:
    """The gateways that hold at least one of a user's sockets, in a stable order."""
    return sorted(gw for gw, conns in (connections or {}).items() if conns)


def push_preview(message: DownstreamMessage) -> str:
    text = _PUSH_PREVIEWS.get(message.message_type, message.content)
    if len(text) > _PUSH_PREVIEW_CHARS:
        text = text[: _PUSH_PREVIEW_CHARS - 1] + "…"
    return f"{message.from_user_id}: {text}"


def offline_tasks(message: DownstreamMessage, user_id: str) -> list[PersistMessageTask | OfflinePushTask]:
    """The spec's offline path: persist the message, then push a notification."""
    ts = now_ms()
    persist = PersistMessageTask(
        task_id=f"persist:{message.message_id}:{user_id}",
        timestamp=ts,
        payload=PersistMessagePayload(
            message_id=message.message_id,
            conversation_id=message.conversation_id,
            from_user_id=message.from_user_id,
            to_user_id=user_id,
            content=message.content,
            message_type=message.message_type,
            metadata=message.metadata,
        ),
    )
    push = OfflinePushTask(
        task_id=f"push:{message.message_id}:{user_id}",
        timestamp=ts,
        payload=OfflinePushPayload(
            user_id=user_id, message_id=message.message_id, title="新消息", content=push_preview(message)
        ),
    )
    return [persist, push]
