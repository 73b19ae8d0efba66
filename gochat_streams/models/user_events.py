"""``im-user-topic`` records: everything that concerns one user, keyed by that user's id.

Presence changes, messages to deliver, acknowledgements and bounces share the topic so
that, for one user, they are processed in the order they happened, by the one worker
that holds the user's presence and inbox.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, TypeAdapter, model_validator

from .common import Id, Model, TimestampMs, UserId
from .messages import DownstreamMessage

#: Users one Delivery may name: a group_fanout batch at most (settings.fanout_batch_size).
MAX_DELIVERY_USERS = 10_000
#: Acknowledgements one Ack record may carry: at about 100 bytes each, well within a record.
MAX_ACKS = 1_000


class PresenceChange(Model):
    """A gateway saw one of the user's sockets open (``online``) or close."""

    kind: Literal["presence"] = "presence"
    user_id: UserId
    gateway_id: Id
    connection_id: Id
    online: bool
    timestamp: TimestampMs

    @property
    def users(self) -> list[str]:
        return [self.user_id]


class Delivery(Model):
    """A message for each of ``user_ids``, to be routed to wherever each of them is.

    The users are the recipients: for a group message its members on one partition of
    ``im-user-topic`` (the message's own ``to_user_id`` stays null), so that a group
    message costs a record and an event per partition rather than per member. The
    record's key is the first of them, which puts it on that partition
    (routing.deliveries); the worker refuses one whose users are not all there.

    The message is kept in each user's inbox until acknowledged, except an ``echo``: the
    sender's own group message, for the sender's other sockets, pushed only if online.
    """

    kind: Literal["delivery"] = "delivery"
    user_ids: list[UserId] = Field(min_length=1, max_length=MAX_DELIVERY_USERS)
    message: DownstreamMessage
    echo: bool = False

    @property
    def users(self) -> list[str]:
        return self.user_ids

    @model_validator(mode="before")
    @classmethod
    def _one_user(cls, data: Any) -> Any:
        """A record from before ``user_ids`` (``user_id``, one recipient) still reads, during an upgrade."""
        if isinstance(data, dict) and "user_id" in data and "user_ids" not in data:
            data = {**data, "user_ids": [data["user_id"]]}
            del data["user_id"]
        return data


class Acked(Model):
    """The user's client acknowledged inbox entry ``seq`` (message ``message_id``)."""

    user_id: UserId
    message_id: Id
    seq: int = Field(ge=1)


class Ack(Model):
    """Acknowledgements from a gateway's sockets, of users on one partition of ``im-user-topic``.

    A gateway puts the acks that arrive while its last record to that partition is in
    flight into one record (gateway/acks.py): one event here for many, as with a group's
    Delivery. The record's key is the first entry's user.
    """

    kind: Literal["ack"] = "ack"
    entries: list[Acked] = Field(min_length=1, max_length=MAX_ACKS)

    @property
    def users(self) -> list[str]:
        return [acked.user_id for acked in self.entries]

    @model_validator(mode="before")
    @classmethod
    def _one_entry(cls, data: Any) -> Any:
        """A record from before ``entries`` (one ack, its fields at the top) still reads, during an upgrade."""
        if isinstance(data, dict) and "entries" not in data and "seq" in data:
            data = {"kind": data.get("kind", "ack"), "entries": [{k: v for k, v in data.items() if k != "kind"}]}
        return data


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

    @property
    def users(self) -> list[str]:
        return [self.user_id]


UserEvent = Annotated[Union[PresenceChange, Delivery, Ack, Bounce], Field(discriminator="kind")]
USER_EVENT_ADAPTER: TypeAdapter[UserEvent] = TypeAdapter(UserEvent)
