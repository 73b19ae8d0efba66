import json
from pathlib import Path

import pytest

from gochat_streams.models import Delivery, OfflinePushTask, PersistMessageTask, UpstreamMessage
from gochat_streams.routing import Unroutable, deliveries, gateways_for, offline_tasks, push_preview
from gochat_streams.tables.presence import with_connection, without_connection

EXAMPLE = json.loads((Path(__file__).parent / "spec_examples.json").read_text())["upstream"]


def test_single_chat_is_one_delivery_keyed_by_recipient() -> None:
    message = UpstreamMessage.model_validate(EXAMPLE)
    [(key, delivery)] = deliveries(message)
    assert key == "user_456"
    assert isinstance(delivery, Delivery)
    assert delivery.message.message_id == "msg_123"
    assert delivery.message.from_user_id == "user_123"
    assert "gateway_id" not in delivery.message.model_dump()


def test_message_without_recipient_is_unroutable() -> None:
    message = UpstreamMessage.model_validate({**EXAMPLE, "to_user_id": None})
    with pytest.raises(Unroutable):
        deliveries(message)


def test_gateways_for_skips_gateways_without_sockets() -> None:
    assert gateways_for(None) == []
    assert gateways_for({"gw_b": {"c1": 1}, "gw_a": {"c2": 2}, "gw_c": {}}) == ["gw_a", "gw_b"]


def test_presence_tracks_each_connection_until_the_last_closes() -> None:
    state = with_connection(None, "gw1", "c1", 10)
    state = with_connection(state, "gw2", "c2", 11)
    state = with_connection(state, "gw1", "c3", 12)
    assert state == {"gw1": {"c1": 10, "c3": 12}, "gw2": {"c2": 11}}
    state = without_connection(state, "gw1", "c1")
    assert gateways_for(state) == ["gw1", "gw2"]
    state = without_connection(state, "gw1", "c3")
    state = without_connection(state, "gw2", "c2")
    assert state == {}


def test_offline_path_persists_then_pushes() -> None:
    message = UpstreamMessage.model_validate(EXAMPLE).to_downstream()
    persist, push = offline_tasks(message, "user_456")
    assert isinstance(persist, PersistMessageTask) and isinstance(push, OfflinePushTask)
    assert persist.payload.message_id == push.payload.message_id == "msg_123"
    assert persist.payload.to_user_id == push.payload.user_id == "user_456"
    assert push.payload.title == "新消息"
    assert push.payload.content == "user_123: Hello World"


def test_push_preview_names_non_text_and_truncates() -> None:
    message = UpstreamMessage.model_validate(
        {**EXAMPLE, "message_type": "image", "content": "https://x/y.jpg", "metadata": {}}
    ).to_downstream()
    assert push_preview(message) == "user_123: [图片]"
    long_text = UpstreamMessage.model_validate({**EXAMPLE, "content": "字" * 300}).to_downstream()
    assert len(push_preview(long_text)) == len("user_123: ") + 100
