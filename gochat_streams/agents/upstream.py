"""im-upstream-topic -> im-user-topic | im-group-topic: validate each client message and re-key it.

The upstream is keyed by sender (one sender's messages stay in order). A single-chat
message goes on to ``im-user-topic`` keyed by its recipient, where agents/delivery.py
owns the recipient's presence and inbox, and is persisted. Group and system messages go
to ``im-group-topic`` keyed by their group, where agents/groups.py owns the membership.
"""

from __future__ import annotations

from faust import StreamT

from ..app import app, settings
from ..channels import group, task, upstream, user
from ..codecs import DecodeError, decode_upstream, encode
from ..groups import target_id
from ..metrics import messages_routed, reject
from ..models import Delivery
from ..routing import addressing_error, is_single_chat, persist_task


@app.agent(upstream, name="route_upstream")
async def route_upstream(stream: StreamT[bytes]) -> None:
    """im-upstream-topic -> im-user-topic (single chat) or im-group-topic (groups, system messages)."""
    async for raw in stream:
        try:
            message = decode_upstream(raw, max_content_chars=settings.max_content_chars)
        except DecodeError as exc:
            reject("upstream", exc.reason, exc.detail)
            continue
        if (error := addressing_error(message)) is not None:
            reject("upstream", "unroutable", f"{message.message_id}: {error}")
            continue
        if not is_single_chat(message):
            await group.send(key=target_id(message), value=raw)
            continue
        assert message.to_user_id is not None
        delivered = message.to_downstream()
        await user.send(key=message.to_user_id, value=encode(Delivery(user_id=message.to_user_id, message=delivered)))
        await task.send(key="persist_message", value=encode(persist_task(delivered)))
        messages_routed.labels("single").inc()
