"""WebSocket frames between a client and its gateway (JSON objects with a ``type``)."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, TypeAdapter

from .common import Id, Model, TimestampMs
from .messages import MessageBody


class ClientMessage(MessageBody):
    """A message as a client sends it; the gateway adds sender, gateway and version."""

    message_id: Id
    to_user_id: Id | None = None
    conversation_id: Id
    timestamp: TimestampMs | None = None
    #: Optional; when present it must be the token's user, else the frame is refused.
    from_user_id: Id | None = None


class SendFrame(Model):
    type: Literal["send"]
    message: ClientMessage


class AckFrame(Model):
    """The client has the message: the gateway will not resend it on reconnect."""

    type: Literal["ack"]
    message_id: Id


ClientFrame = Annotated[Union[SendFrame, AckFrame], Field(discriminator="type")]
CLIENT_FRAME_ADAPTER: TypeAdapter[ClientFrame] = TypeAdapter(ClientFrame)

ErrorCode = Literal[
    "malformed_json",
    "invalid_frame",
    "unknown_type",
    "frame_too_large",
    "content_too_large",
    "sender_mismatch",
    "broker_unavailable",
]
