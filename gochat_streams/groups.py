"""Group and conversation rules as plain functions: no Faust, no I/O.

A group's state is what the groups table holds: ``{"kind", "owner", "members"}``
(members in the order they joined). :func:`apply` takes the state and a message for
the group and returns the new state, who receives the message and the message as it
is delivered, or raises :class:`Refused`.

Accepted system messages are rewritten by the service: the content says what happened
(a client cannot make the group read "Alice dismissed the group"), and ``member_ids``
in the metadata lists the users whose membership changed (membership.py replays it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypedDict

from .models import USER_MESSAGE_TYPES, DownstreamMessage, GroupMetadata, RefusalCode, UpstreamMessage
from .models.messages import ConversationMetadata


class GroupState(TypedDict):
    kind: Literal["group", "conversation"]
    owner: str
    members: list[str]


class Refused(Exception):
    def __init__(self, code: RefusalCode, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code: RefusalCode = code
        self.detail = detail


@dataclass(frozen=True)
class Outcome:
    #: The group after the message; None when it no longer exists (dismissed, emptied).
    state: GroupState | None
    #: Who gets the message, the sender included (they get it as an echo).
    recipients: list[str]
    message: DownstreamMessage


def target_id(message: UpstreamMessage) -> str:
    """The group or conversation a message without ``to_user_id`` is for."""
    if message.message_type == "system_group":
        return str(message.metadata["group_id"])
    if message.message_type == "system_conversation":
        return str(message.metadata["conversation_id"])
    return message.conversation_id


def apply(state: GroupState | None, message: UpstreamMessage) -> Outcome:
    if message.message_type in USER_MESSAGE_TYPES:
        _require_member(state, message.from_user_id, message.conversation_id)
        assert state is not None
        return Outcome(state, list(state["members"]), message.to_downstream())
    if message.message_type == "system_conversation":
        return _create_conversation(state, message)
    return _group_action(state, message)


def _require_member(state: GroupState | None, user_id: str, group_id: str) -> None:
    if state is None:
        raise Refused("unknown_group", f"{group_id} does not exist")
    if user_id not in state["members"]:
        raise Refused("not_a_member", f"{user_id} is not a member of {group_id}")


def _system(message: UpstreamMessage, content: str, metadata: dict[str, Any]) -> DownstreamMessage:
    return DownstreamMessage.model_construct(
        **{**message.to_downstream().model_dump(), "content": content, "metadata": metadata}
    )


def _create_conversation(state: GroupState | None, message: UpstreamMessage) -> Outcome:
    meta = ConversationMetadata.model_validate(message.metadata)
    sender = message.from_user_id
    if meta.creator_id != sender:
        raise Refused("forbidden", "creator_id must be the sender")
    if state is not None:
        raise Refused("conflict", f"{meta.conversation_id} already exists")
    members = _unique([sender, *(meta.member_ids or [])])
    new: GroupState = {"kind": "conversation", "owner": sender, "members": members}
    metadata = {**message.metadata, "member_ids": members}
    return Outcome(new, members, _system(message, f"{sender} 创建了会话", metadata))


def _group_action(state: GroupState | None, message: UpstreamMessage) -> Outcome:
    meta = GroupMetadata.model_validate(message.metadata)
    sender, group_id, action = message.from_user_id, meta.group_id, meta.action
    if meta.inviter_id is not None and meta.inviter_id != sender:
        raise Refused("forbidden", "inviter_id must be the sender")
    base = {"action": action, "group_id": group_id}

    if action == "create":
        if state is not None:
            raise Refused("conflict", f"{group_id} already exists")
        members = _unique([sender, *(meta.member_ids or [])])
        new: GroupState = {"kind": "group", "owner": sender, "members": members}
        metadata = {**base, "inviter_id": sender, "member_ids": members}
        return Outcome(new, members, _system(message, f"{sender} 创建了群组", metadata))

    if state is None:
        raise Refused("unknown_group", f"{group_id} does not exist")
    if state["kind"] != "group":
        raise Refused("invalid_request", f"{group_id} is a conversation, not a group")
    members, owner = state["members"], state["owner"]

    if action == "join":
        if sender in members:
            raise Refused("conflict", f"{sender} is already a member of {group_id}")
        after = [*members, sender]
        return Outcome({**state, "members": after}, after,
                       _system(message, f"{sender} 加入了群组", {**base, "member_ids": [sender]}))

    _require_member(state, sender, group_id)

    if action == "invite":
        invitee = _subject(meta, "invite")
        if invitee in members:
            raise Refused("conflict", f"{invitee} is already a member of {group_id}")
        after = [*members, invitee]
        metadata = {**base, "inviter_id": sender, "invitee_id": invitee, "member_ids": [invitee]}
        return Outcome({**state, "members": after}, after, _system(message, f"{sender} 邀请 {invitee} 加入群组", metadata))

    if action == "leave":
        after = [m for m in members if m != sender]
        # The owner's leaving hands the group to the longest-standing member.
        new_state: GroupState | None = {**state, "members": after, "owner": owner if sender != owner else after[0]} \
            if after else None
        metadata = {**base, "member_ids": [sender]}
        if new_state is not None and new_state["owner"] != owner:
            metadata["owner_id"] = new_state["owner"]
        return Outcome(new_state, list(members), _system(message, f"{sender} 退出了群组", metadata))

    if sender != owner:
        raise Refused("forbidden", f"only the owner of {group_id} may {action}")

    if action == "kick":
        target = _subject(meta, "kick")
        if target == owner:
            raise Refused("invalid_request", "the owner cannot kick themselves: leave or dismiss instead")
        if target not in members:
            raise Refused("not_a_member", f"{target} is not a member of {group_id}")
        after = [m for m in members if m != target]
        metadata = {**base, "inviter_id": sender, "invitee_id": target, "member_ids": [target]}
        return Outcome({**state, "members": after}, list(members),
                       _system(message, f"{sender} 将 {target} 移出群组", metadata))

    # dismiss
    metadata = {**base, "inviter_id": sender, "member_ids": list(members)}
    return Outcome(None, list(members), _system(message, f"{sender} 解散了群组", metadata))


def _subject(meta: GroupMetadata, action: str) -> str:
    if meta.invitee_id is None:
        raise Refused("invalid_request", f"{action} needs invitee_id")
    return meta.invitee_id


def _unique(ids: list[str]) -> list[str]:
    return list(dict.fromkeys(ids))
