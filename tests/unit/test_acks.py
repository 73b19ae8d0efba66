"""The gateway's AckForwarder: acks that queue while a partition's record is in flight share the next one."""

import asyncio
import json
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError

from gochat_streams.gateway.acks import AckForwarder
from gochat_streams.models import Acked
from gochat_streams.routing import partition_of


class SlowProducer:
    """Writes a record when the test lets it; what it wrote, per key."""

    def __init__(self) -> None:
        self.written: list[tuple[str, list[tuple[str, str, int]]]] = []
        self.release = asyncio.Event()
        self.fail: Exception | None = None

    async def send_and_wait(self, topic: str, *, key: bytes, value: bytes) -> None:
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        entries = [(e["user_id"], e["message_id"], e["seq"]) for e in json.loads(value)["entries"]]
        self.written.append((key.decode(), entries))


def _users_of(partition: int, partitions: int, count: int) -> list[str]:
    return [u for u in (f"u{i}" for i in range(1000)) if partition_of(u, partitions) == partition][:count]


async def test_acks_queued_behind_a_record_in_flight_share_the_next_one_in_order() -> None:
    producer = SlowProducer()
    acks = AckForwarder(producer, "im-user-topic", 4)  # type: ignore[arg-type]
    users = _users_of(1, 4, 5)
    first = acks.forward(Acked(user_id=users[0], message_id="m0", seq=1))
    await asyncio.sleep(0)  # its record is in flight
    rest = [acks.forward(Acked(user_id=u, message_id=f"m{i}", seq=i + 1)) for i, u in enumerate(users[1:], 1)]
    producer.release.set()
    await asyncio.gather(first, *rest)
    assert producer.written == [
        (users[0], [(users[0], "m0", 1)]),
        (users[1], [(u, f"m{i}", i + 1) for i, u in enumerate(users[1:], 1)]),
    ]


async def test_each_partition_has_records_of_its_own_users() -> None:
    producer = SlowProducer()
    producer.release.set()
    acks = AckForwarder(producer, "im-user-topic", 4)  # type: ignore[arg-type]
    users = _users_of(0, 4, 3) + _users_of(3, 4, 3)
    await asyncio.gather(*(acks.forward(Acked(user_id=u, message_id="m", seq=1)) for u in users))
    for key, entries in producer.written:
        assert {partition_of(u, 4) for u, _, _ in entries} == {partition_of(key, 4)}
    assert sorted(u for _, entries in producer.written for u, _, _ in entries) == sorted(users)


async def test_a_record_not_written_fails_each_of_its_acks_and_the_next_ones_go_on() -> None:
    producer = SlowProducer()
    acks = AckForwarder(producer, "im-user-topic", 1)  # type: ignore[arg-type]
    failing = [acks.forward(Acked(user_id=f"u{i}", message_id="m", seq=1)) for i in range(3)]
    await asyncio.sleep(0)
    producer.fail = KafkaTimeoutError()
    producer.release.set()
    for task in failing:
        with pytest.raises(KafkaTimeoutError):
            await task
    producer.fail = None
    await acks.forward(Acked(user_id="u9", message_id="m", seq=2))
    assert producer.written == [("u9", [("u9", "m", 2)])]


async def test_closing_cancels_what_is_not_written() -> None:
    producer = SlowProducer()
    acks = AckForwarder(producer, "im-user-topic", 1)  # type: ignore[arg-type]
    waiting: list[Any] = [acks.forward(Acked(user_id=f"u{i}", message_id="m", seq=1)) for i in range(3)]
    await asyncio.sleep(0)
    await acks.close()
    for task in waiting:
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_written_waits_for_the_acks_queued_before_on_the_users_partition() -> None:
    producer = SlowProducer()
    acks = AckForwarder(producer, "im-user-topic", 2)  # type: ignore[arg-type]
    [mine, other] = _users_of(0, 2, 1) + _users_of(1, 2, 1)
    acks.forward(Acked(user_id=mine, message_id="m", seq=1))
    await acks.written(other)  # nothing queued on its partition
    waiting = asyncio.ensure_future(acks.written(mine))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    producer.release.set()
    await waiting
    assert producer.written == [(mine, [(mine, "m", 1)])]
