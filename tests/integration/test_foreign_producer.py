"""A foreign client: the spec's JSON examples, produced with librdkafka (confluent-kafka), reach their recipients.

librdkafka's default partitioner is ``consistent_random`` (CRC32 of the key), not the
murmur2 of Java's producer and of aiokafka, which the gateways use: a foreign producer
keyed by ``from_user_id`` puts a sender on another partition of ``im-upstream-topic``
than a gateway does, but always the same one, so its own messages keep their order
(nothing partitioned by sender is kept beside the upstream, so which partition does not
matter). Its ``murmur2_random`` partitioner puts the sender where a gateway does.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka import Message, Producer

from gochat_streams import topics

from .conftest import Cluster

pytestmark = pytest.mark.integration

EXAMPLES: dict[str, Any] = json.loads((Path(__file__).parents[1] / "unit" / "spec_examples.json").read_text())
SENDER, RECIPIENT = EXAMPLES["upstream"]["from_user_id"], EXAMPLES["upstream"]["to_user_id"]


def _upstream(message_id: str, **fields: Any) -> dict[str, Any]:
    """The spec's upstream example with another id and ``fields`` (a message type's example)."""
    return {**EXAMPLES["upstream"], "message_id": message_id, **fields}


def _to_group(message_id: str, group_id: str, **fields: Any) -> dict[str, Any]:
    return _upstream(message_id, to_user_id=None, conversation_id=group_id, **fields)


def _produce(bootstrap_servers: str, topic: str, values: list[dict[str, Any]], **config: str) -> list[Message]:
    """Each value keyed by its sender, with librdkafka's defaults (partitioner, acks) but ``config``; the reports."""
    producer = Producer({"bootstrap.servers": bootstrap_servers, **config})
    reports: list[Message] = []

    def delivered(error: Any, message: Message) -> None:
        assert error is None, error
        reports.append(message)

    for value in values:
        producer.produce(topic, json.dumps(value, ensure_ascii=False).encode(),
                         key=value["from_user_id"].encode(), on_delivery=delivered)
    assert producer.flush(30) == 0
    return reports


async def test_the_spec_examples_from_librdkafka_are_delivered(cluster: Cluster, connect: Any) -> None:
    cluster.start_worker()
    gw = cluster.start_gateway("gw1")
    sender, recipient = await connect(gw, SENDER), await connect(gw, RECIPIENT)
    s = cluster.settings
    group_id = EXAMPLES["system_group"]["metadata"]["group_id"]
    values = [
        EXAMPLES["upstream"],
        *(_upstream(f"msg_{kind}", **EXAMPLES[kind]) for kind in ("text", "image", "file", "location")),
        # A conversation of its creator alone (the example names no other member).
        _to_group("msg_conversation", EXAMPLES["system_conversation"]["metadata"]["conversation_id"],
                  **EXAMPLES["system_conversation"]),
        # The group the example's invite is to, then the invite, then a message to the group.
        _to_group("msg_group_create", group_id, message_type="system_group", content="",
                  metadata={"action": "create", "group_id": group_id}),
        _to_group("msg_invite", group_id, **EXAMPLES["system_group"]),
        _to_group("msg_group", group_id, content="大家好"),
    ]
    servers, upstream = ",".join(s.bootstrap_servers), topics.upstream(s).name
    reports = await asyncio.to_thread(_produce, servers, upstream, values)
    # One sender, one partition: librdkafka's consistent partitioner (CRC32 of the key).
    assert len(reports) == len(values) and len({r.partition() for r in reports}) == 1

    singles = ["msg_123", "msg_text", "msg_image", "msg_file", "msg_location"]
    got = {m["message_id"]: m for m in await recipient.messages(7, ack=True)}
    # All delivered; in order within the single chat, and within the group (different
    # conversations take different partitions: no order between them).
    assert sorted(got) == sorted([*singles, "msg_invite", "msg_group"])
    assert [i for i in got if i in singles] == singles
    assert [i for i in got if i not in singles] == ["msg_invite", "msg_group"]
    # The spec's downstream example, under the pair's conversation id (the logic service's, not "conv_123").
    assert got["msg_123"] == {**EXAMPLES["downstream"], "conversation_id": f"{SENDER}:{RECIPIENT}"}
    for kind in ("text", "image", "file", "location"):
        assert {k: got[f"msg_{kind}"][k] for k in ("message_type", "content", "metadata")} == EXAMPLES[kind]
    assert got["msg_invite"]["metadata"]["invitee_id"] == RECIPIENT and got["msg_group"]["content"] == "大家好"
    # The sender is a member of what it made: its socket gets those.
    echoed = [m["message_id"] for m in await sender.messages(4, ack=True)]
    assert sorted(echoed) == sorted(["msg_conversation", "msg_group_create", "msg_invite", "msg_group"])
    assert [i for i in echoed if i != "msg_conversation"] == ["msg_group_create", "msg_invite", "msg_group"]

    # librdkafka's murmur2_random partitioner puts a sender where the gateways (aiokafka, murmur2) do.
    [report] = await asyncio.to_thread(_produce, servers, upstream, [_upstream("msg_murmur2")],
                                       partitioner="murmur2_random")
    partitions = sorted(range(s.upstream_partitions))
    assert report.partition() == DefaultPartitioner()(SENDER.encode(), partitions, partitions)
    assert [m["message_id"] for m in await recipient.messages(1, ack=True)] == ["msg_murmur2"]
    await recipient.nothing_more()
