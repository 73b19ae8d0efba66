"""im-upstream-topic -> im-user-topic: validate each client message and re-key it by recipient.

The upstream is keyed by sender (one sender's messages stay in order); presence is
keyed by recipient. Rather than look presence up here, where a worker would hold the
wrong users' entries, each message goes on to ``im-user-topic`` keyed by its recipient,
where agents/delivery.py owns both the message and the recipient's presence.
"""

from __future__ import annotations

from faust import StreamT

from ..app import app, settings
from ..channels import upstream, user
from ..codecs import DecodeError, decode_upstream, encode
from ..metrics import messages_routed, reject
from ..routing import Unroutable, deliveries


@app.agent(upstream, name="route_upstream")
async def route_upstream(stream: StreamT[bytes]) -> None:
    """im-upstream-topic -> im-user-topic: validates a message, re-keys it by recipient."""
    async for raw in stream:
        try:
            message = decode_upstream(raw, max_content_chars=settings.max_content_chars)
            routed = deliveries(message)
        except DecodeError as exc:
            reject("upstream", exc.reason, exc.detail)
            continue
        except Unroutable as exc:
            reject("upstream", "unroutable", f"{message.message_id}: {exc}")
            continue
        for user_id, delivery in routed:
            await user.send(key=user_id, value=encode(delivery))
        messages_routed.labels("single").inc()
