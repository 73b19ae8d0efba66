"""route_upstream through Faust's test_context: where it sends good records, and bad ones."""

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from gochat_streams import channels
from gochat_streams.agents.upstream import route_upstream
from gochat_streams.codecs import decode_task, decode_user_event
from gochat_streams.metrics import processing_errors
from gochat_streams.models import Delivery, PersistMessageTask

EXAMPLE = json.loads((Path(__file__).parent / "spec_examples.json").read_text())["upstream"]
GROUP_MESSAGE = {**EXAMPLE, "to_user_id": None, "conversation_id": "group_9"}
INVITE = {**EXAMPLE, "to_user_id": None, "conversation_id": "group_9", "message_type": "system_group",
          "content": "", "metadata": {"action": "invite", "group_id": "group_9", "invitee_id": "user_7"}}


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[tuple[str, bytes]]]:
    """What the agent hands to the producer per topic, and dead letters and alerts to theirs
    (the producer is not started in a test_context)."""
    out: dict[str, list[tuple[str, bytes]]] = {"user": [], "group": [], "task": [], "dlq": [], "alerts": []}
    by_topic = {channels.user.get_topic_name(): out["user"], channels.group.get_topic_name(): out["group"],
                channels.task.get_topic_name(): out["task"]}

    async def produce(topic: str, key: bytes, value: bytes, *_: Any) -> None:
        by_topic[topic].append((key.decode(), value))

    monkeypatch.setattr(channels.app.producer, "append", produce)
    for name, topic in {"dlq": channels.logic_dead_letters.dlq, "alerts": channels.logic_dead_letters.alerts}.items():
        async def capture(*, key: str, value: bytes, _records: list = out[name], **_: Any) -> None:
            _records.append((key, value))

        monkeypatch.setattr(topic, "send", capture)
    return out


def _rejected(reason: str) -> float:
    return processing_errors.labels("logic", reason)._value.get()


async def test_single_chat_is_rekeyed_by_recipient_and_persisted(sent: dict[str, list]) -> None:
    async with route_upstream.test_context() as agent:
        await agent.put(json.dumps(EXAMPLE).encode())
    [(key, value)] = sent["user"]
    assert key == "user_456"
    delivery = decode_user_event(value)
    assert isinstance(delivery, Delivery) and delivery.user_ids == ["user_456"] and not delivery.echo
    # The spec's example names its single chat "conv_123": the server names it by its two users.
    assert delivery.message.model_dump() == {k: v for k, v in EXAMPLE.items() if k != "gateway_id"} | {
        "conversation_id": "user_123:user_456"}
    [(task_key, task_value)] = sent["task"]
    task = decode_task(task_value)
    assert task_key == "persist_message" and isinstance(task, PersistMessageTask)
    assert (task.payload.message_id, task.payload.to_user_id, task.payload.timestamp) == (
        "msg_123", "user_456", EXAMPLE["timestamp"])
    assert (task.payload.conversation_id, task.payload.membership) == ("user_123:user_456", None)
    assert sent["group"] == []


async def test_a_single_chat_naming_another_conversation_stays_its_own(sent: dict[str, list]) -> None:
    # A foreign producer is not trusted either: mallory's message names alice and bob's
    # chat, then a group; both are delivered and stored as mallory and bob's.
    async with route_upstream.test_context() as agent:
        for i, named in enumerate(["alice:bob", "group_9"]):
            await agent.put(json.dumps({**EXAMPLE, "message_id": f"m{i}", "from_user_id": "mallory",
                                        "to_user_id": "bob", "conversation_id": named}).encode())
    assert [(key, decode_user_event(value).message.conversation_id) for key, value in sent["user"]] == [
        ("bob", "bob:mallory"), ("bob", "bob:mallory")]
    assert [decode_task(value).payload.conversation_id for _, value in sent["task"]] == ["bob:mallory"] * 2
    assert sent["group"] == []


async def test_group_and_system_messages_go_to_the_group_topic_keyed_by_group(sent: dict[str, list]) -> None:
    async with route_upstream.test_context() as agent:
        await agent.put(json.dumps(GROUP_MESSAGE).encode())
        await agent.put(json.dumps(INVITE).encode())
    assert [key for key, _ in sent["group"]] == ["group_9", "group_9"]
    assert [json.loads(v)["message_type"] for _, v in sent["group"]] == ["text", "system_group"]
    assert sent["user"] == [] and sent["task"] == []


async def test_bad_records_are_dead_lettered_and_do_not_stop_the_stream(sent: dict[str, list]) -> None:
    before = _rejected("malformed_json"), _rejected("unknown_type"), _rejected("unroutable")
    async with route_upstream.test_context() as agent:
        await agent.put(b"{oops")
        await agent.put(json.dumps({**EXAMPLE, "message_type": "video"}).encode())
        await agent.put(json.dumps({**INVITE, "to_user_id": "user_456"}).encode())
        await agent.put(json.dumps({**INVITE, "conversation_id": "other_group"}).encode())
        await agent.put(json.dumps({**EXAMPLE, "message_id": "after_bad"}).encode())
    assert [json.loads(v)["message"]["message_id"] for _, v in sent["user"]] == ["after_bad"]
    assert sent["group"] == []
    after = _rejected("malformed_json"), _rejected("unknown_type"), _rejected("unroutable")
    assert [a - b for a, b in zip(after, before)] == [1, 1, 2]
    letters = [json.loads(v) for _, v in sent["dlq"]]
    assert [d["reason"] for d in letters] == ["malformed_json", "unknown_type", "unroutable", "unroutable"]
    assert base64.b64decode(letters[0]["value_b64"]) == b"{oops"
    assert all(d["service"] == "logic" and d["retry_count"] == 0 for d in letters)
    assert [json.loads(v)["reason"] for _, v in sent["alerts"]] == [d["reason"] for d in letters]
