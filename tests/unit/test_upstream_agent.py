"""route_upstream through Faust's test_context: what it sends for good and bad records."""

import json
from pathlib import Path
from typing import Any

import pytest

from gochat_streams import channels
from gochat_streams.agents.upstream import route_upstream
from gochat_streams.codecs import decode_user_event
from gochat_streams.metrics import records_rejected
from gochat_streams.models import Delivery

EXAMPLE = json.loads((Path(__file__).parent / "spec_examples.json").read_text())["upstream"]


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bytes]]:
    """What the agent hands to im-user-topic (the producer is not started in a test_context)."""
    out: list[tuple[str, bytes]] = []

    async def capture(*, key: str, value: bytes, **_: Any) -> None:
        out.append((key, value))

    monkeypatch.setattr(channels.user, "send", capture)
    return out


def _rejected(reason: str) -> float:
    return records_rejected.labels("upstream", reason)._value.get()


async def test_single_chat_is_rekeyed_by_recipient(sent: list[tuple[str, bytes]]) -> None:
    async with route_upstream.test_context() as agent:
        await agent.put(json.dumps(EXAMPLE).encode())
    [(key, value)] = sent
    assert key == "user_456"
    delivery = decode_user_event(value)
    assert isinstance(delivery, Delivery)
    assert delivery.message.model_dump() == {k: v for k, v in EXAMPLE.items() if k != "gateway_id"}


async def test_bad_records_are_counted_and_do_not_stop_the_stream(sent: list[tuple[str, bytes]]) -> None:
    before = _rejected("malformed_json"), _rejected("unknown_type"), _rejected("unroutable")
    async with route_upstream.test_context() as agent:
        await agent.put(b"{oops")
        await agent.put(json.dumps({**EXAMPLE, "message_type": "video"}).encode())
        await agent.put(json.dumps({**EXAMPLE, "to_user_id": None}).encode())
        await agent.put(json.dumps({**EXAMPLE, "message_id": "after_bad"}).encode())
    assert [json.loads(v)["message"]["message_id"] for _, v in sent] == ["after_bad"]
    after = _rejected("malformed_json"), _rejected("unknown_type"), _rejected("unroutable")
    assert [a - b for a, b in zip(after, before)] == [1, 1, 1]
