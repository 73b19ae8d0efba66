"""WebSocket frames between a client and its gateway (JSON objects with a ``type``)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Union

from pydantic import Field, TypeAdapter

from .common import Id, Model, TimestampMs, UserId
from .messages import MessageBody


class ClientMessage(MessageBody):
    """A message as a client sends it; the gateway adds sender, gateway and version."""

    #: Whatever its content looks like, a client's metadata is checked: the gateway seals it.
    may_be_sealed: ClassVar[bool] = False

    message_id: Id
    to_user_id: UserId | None = None
    #: Required for a group or conversation (``to_user_id`` null). A single chat's is
    #: set by the gateway from the two users; whatever the client sends is ignored.
    conversation_id: Id | None = None
    timestamp: TimestampMs | None = None
    #: Optional; when present it must be the token's user, else the frame is refused.
    from_user_id: UserId | None = None


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
    "rate_limited",
    # The socket's token expired: the gateway closes it after this frame.
    "token_expired",
    # Refused by the logic service (conversations.py), after the gateway accepted the frame:
    "unknown_group",
    "not_a_member",
    "forbidden",
    "conflict",
    "invalid_request",
]

RefusalCode = Literal["unknown_group", "not_a_member", "forbidden", "conflict", "invalid_request"]


class Refusal(Model):
    """The logic service refused a message: becomes an error frame on the sender's gateway.

    Travels on the sender's ``im-downstream-topic-{gateway_id}``, marked by a header
    (topics.DOWNSTREAM_KIND), keyed by the sender.
    """

    user_id: UserId
    message_id: Id
    code: RefusalCode
    detail: str
