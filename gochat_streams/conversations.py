"""Who belongs to which conversation: the one membership model, as plain functions (no Faust, no I/O).

A single chat's conversation is a function of its two participants
(:func:`single_chat_id`): the server computes it, whatever a client or a foreign
producer says, so nobody can name a pair they are not part of.

A group's or conversation's state is what the logic service's groups table holds:
``{"kind", "owner", "members"}`` (members in the order they joined). :func:`apply`
takes the state and a message for the group and returns the new state, who receives
the message, the message as it is delivered and the :class:`MembershipChange` it made
(computed from the state before and after), or raises :class:`Refused`. The message
store applies that change as given (store/base.py): it never re-derives membership.

Accepted system messages are rewritten by the service: the content says what happened
(a client cannot make the group read "Alice dismissed the group"), and ``member_ids``
in the metadata lists, for clients, the users whose membership changed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal, TypedDict

from .models import USER_MESSAGE_TYPES, DownstreamMessage, GroupMetadata, RefusalCode, UpstreamMessage
from .models.messages import ConversationMetadata
from .models.tasks import MembershipChange

#: Joins a single chat's two participants; user ids never contain it, group ids may not.
PAIR_SEPARATOR = ":"


def single_chat_id(user_a: str, user_b: str) -> str:
    """A single chat's conversation id: its two participants' ids, sorted, joined by ":"."""
    return PAIR_SEPARATOR.join(sorted((user_a, user_b)))


def single_chat_participants(conversation_id: str) -> tuple[str, str] | None:
    """The two participants a conversation id names, if it is a single chat's canonical id."""
    parts = conversation_id.split(PAIR_SEPARATOR)
    if len(parts) != 2 or not all(parts) or parts[0] > parts[1]:
        return None
    return parts[0], parts[1]


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
    #: Whose membership the message changed; None when it changed nothing.
    membership: MembershipChange | None = None


def membership_change(before: GroupState | None, after: GroupState | None) -> MembershipChange | None:
    """Who joined and who left between two states of a group (None: nobody)."""
    old = before["members"] if before is not None else []
    new = after["members"] if after is not None else []
    old_set, new_set = set(old), set(new)
    added = [m for m in new if m not in old_set]
    removed = [m for m in old if m not in new_set]
    return MembershipChange(added=added, removed=removed) if added or removed else None


def target_id(message: UpstreamMessage) -> str:
    """The group or conversation a message without ``to_user_id`` is for."""
    if message.message_type == "system_group":
        return str(message.metadata["group_id"])
    if message.message_type == "system_conversation":
        return str(message.metadata["conversation_id"])
    return message.conversation_id


def apply(state: GroupState | None, message: UpstreamMessage) -> Outcome:
    group_id = target_id(message)
    if PAIR_SEPARATOR in group_id:
        # Else a group named "alice:bob" would write into alice and bob's single chat.
        raise Refused("invalid_request", f"a group or conversation id must not contain {PAIR_SEPARATOR!r}")
    outcome = _decide(state, message)
    if message.message_type in USER_MESSAGE_TYPES:
        return outcome  # a chat message changes nobody's membership
    return replace(outcome, membership=membership_change(state, outcome.state))


def _decide(state: GroupState | None, message: UpstreamMessage) -> Outcome:
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
