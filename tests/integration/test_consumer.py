"""The Faust consumer of compat/aiokafka.py, against the real broker."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faust.types import TP

from gochat_streams import topics
from gochat_streams.app import create_app
from gochat_streams.kafka import client_kwargs
from gochat_streams.settings import Settings

from .conftest import WAIT_S, Cluster

pytestmark = pytest.mark.integration


async def _produce(s: Settings, topic: str, counts: dict[int, int]) -> None:
    producer = AIOKafkaProducer(**client_kwargs(s), acks="all")
    await producer.start()
    try:
        sent = [await producer.send(topic, b"record", partition=p) for p, n in counts.items() for _ in range(n)]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def _read(consumer: AIOKafkaConsumer, tp: TopicPartition, count: int) -> list[Any]:
    """``count`` records of ``tp``, read as Faust reads: naming the partitions it hands over."""
    records: list[Any] = []
    async with asyncio.timeout(WAIT_S):
        while len(records) < count:
            records.extend((await consumer.getmany(tp, timeout_ms=200)).get(tp, []))
    return records


async def test_a_paused_partition_is_not_fetched_and_loses_nothing(cluster: Cluster) -> None:
    """Faust pauses a partition it will not hand over (the worker's own tables' changelogs,
    once recovered). aiokafka went on fetching it, and a partition's records fetched and
    never read hold every later fetch from its broker for 100 ms (aiokafka's prefetch
    backoff): the first messages after each start waited that long at each hop."""
    s = cluster.settings
    topic = topics.upstream(s)
    await topics.ensure_topics(s, [topic])
    handed, paused = TopicPartition(topic.name, 0), TopicPartition(topic.name, 1)
    app = create_app(s, topics.logic_group(s), topics.logic_topics(s), autodiscover=[])
    thread = app.consumer._thread  # the worker's consumer thread, here on this test's loop
    thread._consumer = aiokafka = AIOKafkaConsumer(**client_kwargs(s), group_id=None, enable_auto_commit=False,
                                                   auto_offset_reset="earliest")
    thread.thread_loop.close()  # never run: the thread is not started
    thread.thread_loop = asyncio.get_running_loop()
    await aiokafka.start()
    try:
        aiokafka.assign([handed, paused])
        app.consumer.pause_partitions({TP(paused.topic, paused.partition)})
        await asyncio.sleep(0)  # the pause is handed to the consumer thread's loop
        await _produce(s, topic.name, {0: 3, 1: 3})
        assert len(await _read(aiokafka, handed, 3)) == 3
        assert paused not in aiokafka._fetcher._records  # fetched and left unread: none

        app.consumer.resume_partitions({TP(paused.topic, paused.partition)})
        await asyncio.sleep(0)
        assert [r.offset for r in await _read(aiokafka, paused, 3)] == [0, 1, 2]
    finally:
        await aiokafka.stop()


async def test_a_pause_after_the_consumer_thread_stopped_does_nothing(cluster: Cluster) -> None:
    """Faust may pause partitions while the worker shuts down, after its consumer thread's loop closed."""
    s = cluster.settings
    app = create_app(s, topics.logic_group(s), topics.logic_topics(s), autodiscover=[])
    thread = app.consumer._thread
    thread._consumer = stopped = AIOKafkaConsumer(**client_kwargs(s), group_id=None)
    await stopped.stop()
    thread.thread_loop.close()  # as the stopped thread leaves it
    app.consumer.pause_partitions({TP(topics.upstream(s).name, 0)})
    assert app.consumer._paused_partitions == {TP(topics.upstream(s).name, 0)}  # Faust's own bookkeeping still ran
    app.consumer.resume_partitions({TP(topics.upstream(s).name, 0)})
