"""``im-user-topic`` records: everything that concerns one user, keyed by that user's id.

Presence changes and messages to deliver share the topic so that, for one user, a
connect and the messages that follow it are processed in the order they happened.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, TypeAdapter

from .common import Id, Model, TimestampMs
from .messages import DownstreamMessage


class PresenceChange(Model):
    """A gateway saw one of the user's sockets open (``online``) or close."""

    kind: Literal["presence"] = "presence"
    user_id: Id
    gateway_id: Id
    connection_id: Id
    online: bool
    timestamp: TimestampMs


class Delivery(Model):
    """A message for ``message.to_user_id``, to be routed to wherever that user is."""

    kind: Literal["delivery"] = "delivery"
    message: DownstreamMessage


UserEvent = Annotated[Union[PresenceChange, Delivery], Field(discriminator="kind")]
USER_EVENT_ADAPTER: TypeAdapter[UserEvent] = TypeAdapter(UserEvent)
