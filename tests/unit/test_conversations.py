"""The membership model of conversations.py: single chats' ids; group rules (who may do what, who
hears of it, what the group becomes) and the membership change each accepted message makes."""

from typing import Any

import pytest

from gochat_streams.conversations import (
    GroupState,
    Refused,
    apply,
    membership_change,
    single_chat_id,
    single_chat_participants,
    target_id,
)
from gochat_streams.models import MembershipChange, UpstreamMessage


def _system(sender: str, action: str, **meta: Any) -> UpstreamMessage:
    return UpstreamMessage(
        message_id=f"{sender}-{action}", from_user_id=sender, to_user_id=None, conversation_id="g1",
        content="client text is replaced", message_type="system_group",
        metadata={"action": action, "group_id": "g1", **meta}, timestamp=1, gateway_id="gw",
    )


def _chat(sender: str) -> UpstreamMessage:
    return UpstreamMessage(message_id="m", from_user_id=sender, to_user_id=None, conversation_id="g1",
                           content="hi", message_type="text", timestamp=1, gateway_id="gw")


def _group(owner: str = "john", *others: str) -> GroupState:
    return {"kind": "group", "owner": owner, "members": [owner, *others]}


def test_create_makes_the_sender_owner_and_tells_every_member() -> None:
    outcome = apply(None, _system("john", "create", member_ids=["alice", "john", "bob"]))
    assert outcome.state == _group("john", "alice", "bob")
    assert outcome.recipients == ["john", "alice", "bob"]
    assert outcome.message.content == "john 创建了群组"
    assert outcome.message.metadata["member_ids"] == ["john", "alice", "bob"]


def test_invite_by_a_member_is_the_specs_message_to_everyone_after() -> None:
    outcome = apply(_group("john", "bob"), _system("bob", "invite", inviter_id="bob", invitee_id="alice"))
    assert outcome.state == _group("john", "bob", "alice")
    assert outcome.recipients == ["john", "bob", "alice"]
    assert outcome.message.content == "bob 邀请 alice 加入群组"
    assert outcome.message.metadata == {"action": "invite", "group_id": "g1", "inviter_id": "bob",
                                        "invitee_id": "alice", "member_ids": ["alice"]}


@pytest.mark.parametrize(
    ("state", "message", "code"),
    [
        (None, _system("john", "invite", invitee_id="a"), "unknown_group"),
        (_group("john"), _system("eve", "invite", invitee_id="a"), "not_a_member"),
        (_group("john", "bob"), _system("bob", "invite", inviter_id="john", invitee_id="a"), "forbidden"),
        (_group("john", "bob"), _system("bob", "invite"), "invalid_request"),
        (_group("john", "bob"), _system("john", "invite", invitee_id="bob"), "conflict"),
        (_group("john", "bob"), _system("bob", "kick", invitee_id="john"), "forbidden"),
        (_group("john", "bob"), _system("bob", "dismiss"), "forbidden"),
        (_group("john", "bob"), _system("john", "kick", invitee_id="eve"), "not_a_member"),
        (_group("john", "bob"), _system("john", "kick", invitee_id="john"), "invalid_request"),
        (_group("john"), _system("eve", "create"), "conflict"),
        (_group("john"), _system("john", "join"), "conflict"),
        (_group("john"), _system("eve", "leave"), "not_a_member"),
        (_group("john"), _chat("eve"), "not_a_member"),
        (None, _chat("eve"), "unknown_group"),
    ],
)
def test_refused_actions_name_the_rule(state: GroupState | None, message: UpstreamMessage, code: str) -> None:
    with pytest.raises(Refused) as refused:
        apply(state, message)
    assert refused.value.code == code


def test_kick_tells_the_kicked_member_too() -> None:
    outcome = apply(_group("john", "bob", "carl"), _system("john", "kick", invitee_id="bob"))
    assert outcome.state == _group("john", "carl")
    assert outcome.recipients == ["john", "bob", "carl"]
    assert outcome.message.content == "john 将 bob 移出群组"


def test_the_owner_leaving_hands_over_and_the_last_member_leaving_ends_the_group() -> None:
    outcome = apply(_group("john", "bob", "carl"), _system("john", "leave"))
    assert outcome.state == {"kind": "group", "owner": "bob", "members": ["bob", "carl"]}
    assert outcome.message.metadata["owner_id"] == "bob"
    assert apply(_group("john"), _system("john", "leave")).state is None


def test_join_and_dismiss() -> None:
    joined = apply(_group("john"), _system("eve", "join"))
    assert joined.state == _group("john", "eve") and joined.recipients == ["john", "eve"]
    dismissed = apply(_group("john", "eve"), _system("john", "dismiss"))
    assert dismissed.state is None and dismissed.recipients == ["john", "eve"]


def test_member_chat_goes_to_every_member() -> None:
    outcome = apply(_group("john", "bob"), _chat("bob"))
    assert outcome.recipients == ["john", "bob"] and outcome.message.content == "hi"


def test_conversation_create_is_a_group_of_participants() -> None:
    message = UpstreamMessage(
        message_id="c", from_user_id="john", to_user_id=None, conversation_id="conv_1", content="",
        message_type="system_conversation", timestamp=1, gateway_id="gw",
        metadata={"action": "create", "conversation_id": "conv_1", "creator_id": "john", "member_ids": ["amy"]},
    )
    assert target_id(message) == "conv_1"
    outcome = apply(None, message)
    assert outcome.state == {"kind": "conversation", "owner": "john", "members": ["john", "amy"]}
    assert outcome.message.content == "john 创建了会话"
    with pytest.raises(Refused):
        apply(outcome.state, _system("john", "invite", invitee_id="x"))


def test_a_single_chats_id_is_its_two_users_sorted() -> None:
    assert single_chat_id("bob", "alice") == single_chat_id("alice", "bob") == "alice:bob"
    assert single_chat_id("bob", "bob") == "bob:bob"
    assert single_chat_participants("alice:bob") == ("alice", "bob")
    # Not a pair's canonical id: nobody reads it as a single chat.
    for other in ("bob:alice", "g1", "a:b:c", ":bob", "alice:"):
        assert single_chat_participants(other) is None


def test_each_accepted_message_carries_the_membership_change_it_made() -> None:
    state = None
    members: set[str] = set()
    changes = []
    for message in [_system("john", "create", member_ids=["bob"]), _system("bob", "invite", invitee_id="amy"),
                    _system("eve", "join"), _chat("eve"), _system("john", "kick", invitee_id="bob"),
                    _system("amy", "leave"), _system("john", "dismiss")]:
        outcome = apply(state, message)
        state = outcome.state
        changes.append(outcome.membership)
        if outcome.membership is not None:
            members = (members | set(outcome.membership.added)) - set(outcome.membership.removed)
        assert members == set(state["members"] if state is not None else [])
    assert changes == [
        MembershipChange(added=["john", "bob"]), MembershipChange(added=["amy"]), MembershipChange(added=["eve"]),
        None, MembershipChange(removed=["bob"]), MembershipChange(removed=["amy"]),
        MembershipChange(removed=["john", "eve"]),
    ]


def test_membership_change_compares_states_not_action_names() -> None:
    assert membership_change(None, None) is None
    assert membership_change(_group("john", "bob"), _group("bob", "john")) is None
    assert membership_change(_group("john", "bob"), None) == MembershipChange(removed=["john", "bob"])


@pytest.mark.parametrize("action", ["create", "join", "invite"])
def test_a_group_id_of_the_single_chat_form_is_refused(action: str) -> None:
    # Else mallory creates a group "alice:bob" and writes into alice and bob's history.
    message = _system("mallory", action, member_ids=["alice"], invitee_id="bob").model_copy(
        update={"conversation_id": "alice:bob", "metadata": {"action": action, "group_id": "alice:bob"}})
    state = _group("mallory") if action != "create" else None
    with pytest.raises(Refused) as refused:
        apply(state, message)
    assert refused.value.code == "invalid_request"
    chat = _chat("mallory").model_copy(update={"conversation_id": "alice:bob"})
    with pytest.raises(Refused) as refused:
        apply(_group("mallory"), chat)
    assert refused.value.code == "invalid_request"
    conversation = UpstreamMessage(
        message_id="c", from_user_id="mallory", to_user_id=None, conversation_id="alice:bob", content="",
        message_type="system_conversation", timestamp=1, gateway_id="gw",
        metadata={"action": "create", "conversation_id": "alice:bob", "creator_id": "mallory"},
    )
    with pytest.raises(Refused) as refused:
        apply(None, conversation)
    assert refused.value.code == "invalid_request"
