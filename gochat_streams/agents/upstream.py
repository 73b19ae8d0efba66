"""im-upstream-topic -> im-user-topic | im-group-topic: validate each client message and re-key it.

The upstream is keyed by sender (one sender's messages stay in order). A single-chat
message goes on to ``im-user-topic`` keyed by its recipient, where agents/delivery.py
owns the recipient's presence and inbox, and is persisted, under the conversation id of
its two users whatever the record said (a foreign producer is not trusted either). Group and system messages go
to ``im-group-topic`` keyed by their group, where agents/groups.py owns the membership.
"""

from __future__ import annotations

import time

from faust import StreamT

from ..app import app, settings
from ..channels import group, logic_dead_letters, task, upstream, user
from ..codecs import DecodeError, decode_upstream, encode
from ..content_crypto import max_sealed_chars
from ..conversations import single_chat_id, target_id
from ..metrics import count_consumed, messages_routed
from ..models import Delivery, UpstreamMessage
from ..outbox import Outgoing
from ..routing import addressing_error, is_single_chat, persist_task
from ..trace import event_hop


_routed_single = messages_routed.labels("single")


def _route(raw: bytes, message: UpstreamMessage) -> list[Outgoing]:
    if not is_single_chat(message):
        return [Outgoing(group, target_id(message), raw)]
    assert message.to_user_id is not None
    conversation_id = single_chat_id(message.from_user_id, message.to_user_id)
    delivered = message.to_downstream().model_copy(update={"conversation_id": conversation_id})
    _routed_single.inc()
    return [
        Outgoing(user, message.to_user_id, encode(Delivery(user_ids=[message.to_user_id], message=delivered))),
        Outgoing(task, "persist_message", encode(persist_task(delivered))),
    ]


@app.agent(upstream, name="route_upstream")
async def route_upstream(stream: StreamT[bytes]) -> None:
    """im-upstream-topic -> im-user-topic (single chat) or im-group-topic (groups, system messages)."""
    async for event in stream.events():
        started = time.perf_counter()
        count_consumed("logic", event.message.topic, settings.namespace)
        raw = event.value
        try:
            message = decode_upstream(raw, max_content_chars=settings.max_content_chars,
                                     max_sealed_chars=max_sealed_chars(settings))
        except DecodeError as exc:
            await logic_dead_letters.bury(event, "upstream", exc.reason, exc.detail)
            continue
        if (error := addressing_error(message)) is not None:
            await logic_dead_letters.bury(event, "upstream", "unroutable", f"{message.message_id}: {error}")
            continue
        await logic_dead_letters.handle(event, "upstream", lambda: _route(raw, message))
        event_hop("logic", message.message_id, event, started, from_user_id=message.from_user_id,
                  to="user" if is_single_chat(message) else "group")
