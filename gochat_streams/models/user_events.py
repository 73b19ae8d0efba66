"""``im-user-topic`` records: everything that concerns one user, keyed by that user's id.

Presence changes, messages to deliver, acknowledgements and bounces share the topic so
that, for one user, they are processed in the order they happened, by the one worker
that holds the user's presence and inbox.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, TypeAdapter

from .common import Id, Model, TimestampMs, UserId
from .messages import DownstreamMessage


class PresenceChange(Model):
    """A gateway saw one of the user's sockets open (``online``) or close."""

    kind: Literal["presence"] = "presence"
    user_id: UserId
    gateway_id: Id
    connection_id: Id
    online: bool
    timestamp: TimestampMs


class Delivery(Model):
    """A message for ``user_id``, to be routed to wherever that user is.

    ``user_id`` is the recipient: for a group message the member (the message's own
    ``to_user_id`` stays null).

    The message is kept in the user's inbox until acknowledged, except an ``echo``: the
    sender's own group message, for the sender's other sockets, pushed only if online.
    """

    kind: Literal["delivery"] = "delivery"
    user_id: UserId
    message: DownstreamMessage
    echo: bool = False


class Ack(Model):
    """The user's client acknowledged the inbox entry ``seq`` (message ``message_id``)."""

    kind: Literal["ack"] = "ack"
    user_id: UserId
    message_id: Id
    seq: int = Field(ge=1)


class Bounce(Model):
    """A gateway got inbox entry ``seq`` for the user but holds none of the user's sockets.

    The user's connections on that gateway opened before ``timestamp`` are stale (the
    gateway restarted, or a disconnect was lost); the message takes another way.
    """

    kind: Literal["bounce"] = "bounce"
    user_id: UserId
    gateway_id: Id
    message_id: Id
    seq: int = Field(ge=1)
    timestamp: TimestampMs


UserEvent = Annotated[Union[PresenceChange, Delivery, Ack, Bounce], Field(discriminator="kind")]
USER_EVENT_ADAPTER: TypeAdapter[UserEvent] = TypeAdapter(UserEvent)
