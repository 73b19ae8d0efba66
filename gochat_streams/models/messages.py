"""Chat messages: the upstream and downstream envelopes and the six message types."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .common import PROTOCOL_VERSION, Id, Model, TimestampMs, UserId, Version

MessageType = Literal["text", "image", "file", "location", "system_conversation", "system_group"]
USER_MESSAGE_TYPES: frozenset[str] = frozenset({"text", "image", "file", "location"})
#: A user message's content sealed by content_crypto.py starts so; its metadata is then ``{}``.
SEALED_PREFIX = "gcm1."


def is_sealed(message_type: str, content: str) -> bool:
    """Whether a message's content is a content_crypto envelope (only user messages are sealed)."""
    return message_type in USER_MESSAGE_TYPES and content.startswith(SEALED_PREFIX)


class _Metadata(BaseModel):
    # Clients may add fields of their own; the ones named here are type-checked.
    model_config = ConfigDict(extra="allow")


class TextMetadata(_Metadata):
    format: Literal["plain", "markdown"] = "plain"
    language: str | None = None


class ImageMetadata(_Metadata):
    width: int | None = Field(None, ge=0)
    height: int | None = Field(None, ge=0)
    size: int | None = Field(None, ge=0)
    format: str | None = None


class FileMetadata(_Metadata):
    filename: str = Field(min_length=1, max_length=255)
    size: int = Field(ge=0)
    mime_type: str | None = None


class LocationMetadata(_Metadata):
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)
    accuracy: float | None = Field(None, ge=0)


class ConversationMetadata(_Metadata):
    action: Literal["create"]
    conversation_id: Id
    creator_id: UserId
    #: The participants besides the creator.
    member_ids: list[UserId] | None = None


GroupAction = Literal["create", "invite", "join", "leave", "kick", "dismiss"]


class GroupMetadata(_Metadata):
    action: GroupAction
    group_id: Id
    inviter_id: UserId | None = None
    invitee_id: UserId | None = None
    member_ids: list[UserId] | None = None


METADATA_MODELS: dict[str, type[_Metadata]] = {
    "text": TextMetadata,
    "image": ImageMetadata,
    "file": FileMetadata,
    "location": LocationMetadata,
    "system_conversation": ConversationMetadata,
    "system_group": GroupMetadata,
}


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


class MessageBody(Model):
    """What makes a message one of the six types: the spec's "消息类型定义" fragments.

    ``metadata`` stays the client's dict, so it reaches the recipient unchanged; it is
    checked against the type's metadata model on the way in.
    """

    message_type: MessageType
    content: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    #: A sealed message's metadata is inside its content, checked by the gateway that sealed
    #: it; a client's message is never taken as sealed (gateway frames set this False).
    may_be_sealed: ClassVar[bool] = True

    @model_validator(mode="after")
    def _metadata_fits_type(self) -> MessageBody:
        if not (self.may_be_sealed and is_sealed(self.message_type, self.content) and not self.metadata):
            METADATA_MODELS[self.message_type].model_validate(self.metadata)
        # PostgreSQL text and JSONB cannot hold NUL: refuse it at the door rather than
        # fail a whole persist batch later.
        if _has_nul(self.content) or _has_nul(self.metadata):
            raise ValueError("content and metadata must not contain NUL characters")
        return self

    def typed_metadata(self) -> _Metadata:
        return METADATA_MODELS[self.message_type].model_validate(self.metadata)


class DownstreamMessage(MessageBody):
    """``im-downstream-topic-{gateway_id}``: what a gateway pushes to the recipient's sockets."""

    message_id: Id
    from_user_id: UserId
    to_user_id: UserId | None = None
    #: A single chat's is :func:`gochat_streams.conversations.single_chat_id` of its two
    #: users, set by the server; a group's or conversation's is its id.
    conversation_id: Id
    timestamp: TimestampMs
    version: Version = PROTOCOL_VERSION


class StoredMessage(DownstreamMessage):
    """A message as the message store holds it (not a wire format).

    ``seq`` is the store's insertion order: history is ordered by it, and a group member
    reads the messages from the ``seq`` of their joining on. Clients set ``timestamp``;
    only the server sets ``seq``.
    """

    seq: int = Field(ge=1)

    def to_downstream(self) -> DownstreamMessage:
        return DownstreamMessage.model_construct(**self.model_dump(exclude={"seq"}))


class UpstreamMessage(DownstreamMessage):
    """``im-upstream-topic``: a message as the sender's gateway stamped it.

    ``to_user_id`` is null for a group message (``conversation_id`` is then the group id).
    """

    gateway_id: Id

    def to_downstream(self, to_user_id: str | None = None) -> DownstreamMessage:
        data = self.model_dump(exclude={"gateway_id"})
        if to_user_id is not None:
            data["to_user_id"] = to_user_id
        return DownstreamMessage.model_construct(**data)
