import json
from pathlib import Path

from aiokafka.partitioner import DefaultPartitioner

from gochat_streams.models import MAX_DELIVERY_USERS, UpstreamMessage
from gochat_streams.routing import (
    addressing_error,
    by_partition,
    deliveries,
    fanout_tasks,
    gateways_for,
    offline_push_task,
    partition_of,
    persist_task,
    push_preview,
)
from gochat_streams.tables.presence import with_connection, without_connection, without_stale

EXAMPLE = json.loads((Path(__file__).parent / "spec_examples.json").read_text())["upstream"]


def test_addressing_of_chat_and_system_messages() -> None:
    assert addressing_error(UpstreamMessage.model_validate(EXAMPLE)) is None
    group_chat = {**EXAMPLE, "to_user_id": None, "conversation_id": "g1"}
    assert addressing_error(UpstreamMessage.model_validate(group_chat)) is None
    invite = {**group_chat, "message_type": "system_group", "metadata": {"action": "join", "group_id": "g1"}}
    assert addressing_error(UpstreamMessage.model_validate(invite)) is None
    assert "to_user_id" in addressing_error(UpstreamMessage.model_validate({**invite, "to_user_id": "u"}))
    assert "metadata.group_id" in addressing_error(UpstreamMessage.model_validate({**invite, "conversation_id": "g2"}))


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


def test_persist_once_per_message_and_push_per_recipient() -> None:
    message = UpstreamMessage.model_validate(EXAMPLE).to_downstream()
    persist, push = persist_task(message), offline_push_task(message, "user_456")
    assert persist.task_type == "persist_message" and push.task_type == "offline_push"
    assert persist.task_id == "persist:msg_123"
    assert persist.payload.timestamp == message.timestamp
    assert persist.payload.message_id == push.payload.message_id == "msg_123"
    assert push.payload.user_id == "user_456"
    assert push.payload.title == "新消息"
    assert push.payload.content == "user_123: Hello World"


def test_fanout_batches_exclude_the_sender() -> None:
    message = UpstreamMessage.model_validate({**EXAMPLE, "to_user_id": None, "conversation_id": "g"}).to_downstream()
    members = ["user_123", *(f"m{i}" for i in range(250))]
    tasks = fanout_tasks(message, "g", members, "user_123", 100)
    assert [len(t.payload.member_ids or []) for t in tasks] == [100, 100, 50]
    assert [m for t in tasks for m in t.payload.member_ids or []] == members[1:]
    assert {t.task_id for t in tasks} == {"fanout:msg_123:0", "fanout:msg_123:1", "fanout:msg_123:2"}
    assert all(t.payload.exclude_user_ids == ["user_123"] and t.payload.message == message for t in tasks)


def test_a_bounce_forgets_only_connections_older_than_it() -> None:
    state = {"gw1": {"old": 10, "new": 30}, "gw2": {"c": 5}}
    assert without_stale(state, "gw1", 20) == {"gw1": {"new": 30}, "gw2": {"c": 5}}
    assert without_stale(state, "gw1", 31) == {"gw2": {"c": 5}}


def test_push_preview_names_non_text_and_truncates() -> None:
    message = UpstreamMessage.model_validate(
        {**EXAMPLE, "message_type": "image", "content": "https://x/y.jpg", "metadata": {}}
    ).to_downstream()
    assert push_preview(message.from_user_id, message.message_type, message.content) == "user_123: [图片]"
    long_text = UpstreamMessage.model_validate({**EXAMPLE, "content": "字" * 300}).to_downstream()
    assert len(push_preview("user_123", "text", long_text.content)) == len("user_123: ") + 100


def test_partition_of_is_where_the_producers_put_a_key() -> None:
    partitions = list(range(10))
    for key in ["user_123", "u0000", "alice", "ü", *(f"m{i}" for i in range(500))]:
        assert partition_of(key, 10) == DefaultPartitioner()(key.encode(), partitions, partitions)


def test_by_partition_groups_keys_once_each_in_order() -> None:
    keys = [f"u{i:04d}" for i in range(300)]
    groups = by_partition([*keys, *keys[:7]], 3)
    assert sorted(k for group in groups for k in group) == keys
    for group in groups:
        assert {partition_of(k, 3) for k in group} == {partition_of(group[0], 3)}
        assert group == sorted(group)
    assert len(groups) == 3


def test_a_group_message_is_one_delivery_per_partition_of_its_members() -> None:
    message = UpstreamMessage.model_validate({**EXAMPLE, "to_user_id": None, "conversation_id": "g"}).to_downstream()
    members = [f"u{i:04d}" for i in range(1000)]
    sent = deliveries(message, members, 10)
    assert len(sent) == 10
    assert sorted(u for d in sent for u in d.user_ids) == members
    assert all(d.message == message and not d.echo for d in sent)
    assert all({partition_of(u, 10) for u in d.user_ids} == {partition_of(d.user_ids[0], 10)} for d in sent)
    # A partition's members beyond what one record may name take another record.
    many = [f"v{i}" for i in range(MAX_DELIVERY_USERS + 1)]
    assert [len(d.user_ids) for d in deliveries(message, many, 1)] == [MAX_DELIVERY_USERS, 1]
