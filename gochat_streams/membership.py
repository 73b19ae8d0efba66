"""Who belongs to a conversation, as its persisted messages say.

The logic service decides group changes (groups.py) and stamps each accepted
``system_group`` / ``system_conversation`` message with ``member_ids``: the users the
change concerns. Replaying persisted messages through :func:`membership_effect` gives
the members that the history endpoint authorises, without asking the logic service.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

_ADDS = frozenset({"create", "invite", "join"})
_REMOVES = frozenset({"leave", "kick"})


@dataclass(frozen=True)
class MembershipEffect:
    add: list[str] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    #: Everyone leaves (a dismissed group).
    clear: bool = False


def membership_effect(
    message_type: str, metadata: Mapping[str, Any], from_user_id: str, to_user_id: str | None
) -> MembershipEffect:
    if to_user_id is not None:
        # A single chat's conversation belongs to its two participants.
        return MembershipEffect(add=sorted({from_user_id, to_user_id}))
    action = metadata.get("action")
    member_ids = list(metadata.get("member_ids") or [])
    if message_type == "system_group":
        if action in _ADDS:
            return MembershipEffect(add=member_ids)
        if action in _REMOVES:
            return MembershipEffect(remove=member_ids)
        if action == "dismiss":
            return MembershipEffect(clear=True)
    if message_type == "system_conversation" and action == "create":
        return MembershipEffect(add=member_ids)
    return MembershipEffect()
