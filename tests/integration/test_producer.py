"""The Faust producer of compat/aiokafka.py, against the real broker."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest
from aiokafka import AIOKafkaClient, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.memory_records import MemoryRecords
from faust.exceptions import ProducerSendError

from gochat_streams import topics
from gochat_streams.app import create_app
from gochat_streams.compat.aiokafka import drain_whole_nodes, track_topic
from gochat_streams.devstack import free_port
from gochat_streams.kafka import client_kwargs, producer_kwargs, wait_until_served
from gochat_streams.settings import Settings

from .conftest import Cluster, consume_all

pytestmark = pytest.mark.integration


async def test_a_batch_for_a_topic_known_at_start_survives_a_metadata_refresh(cluster: Cluster) -> None:
    s = cluster.settings
    early, late = topics.upstream(s), topics.task(s)
    await topics.ensure_topics(s, [early])
    # A long linger keeps the batch in the accumulator across the refresh below.
    producer = AIOKafkaProducer(**client_kwargs(s), acks="all", linger_ms=2000)
    await producer.start()  # a full metadata fetch: ``early`` is known, ``late`` does not exist yet
    try:
        track_topic(producer, early.name)
        pending = await producer.send(early.name, b"waiting", key=b"k")
        await topics.ensure_topics(s, [late])
        await producer.send(late.name, b"first to late", key=b"k")  # aiokafka tracks ``late`` itself
        await producer.client.force_metadata_update()
        # Without track_topic the refresh names only ``late``: ``early`` drops out of the
        # cluster view and the waiting batch never finds a leader.
        sent = await asyncio.wait_for(pending, 10)
        assert (sent.topic, sent.offset) == (early.name, 0)
    finally:
        await producer.stop()


async def test_an_appended_batch_for_a_topic_known_at_start_survives_a_metadata_refresh(cluster: Cluster) -> None:
    """The same, for the workers' ``Producer.append``, which skips ``send``'s metadata wait."""
    s = cluster.settings.model_copy(update={"producer_linger_ms": 2000})  # the batch waits across the refresh
    early, late = topics.upstream(s), topics.task(s)
    await topics.ensure_topics(s, [early])
    producer = create_app(s, topics.logic_group(s), topics.logic_topics(s), autodiscover=[]).producer
    await producer.start()  # a full metadata fetch: ``early`` is known, ``late`` does not exist yet
    try:
        pending, _ = await producer.append(early.name, b"k", b"waiting")
        await topics.ensure_topics(s, [late])
        await producer.append(late.name, b"k", b"first to late")
        await producer._ensure_producer().client.force_metadata_update()
        sent = await asyncio.wait_for(pending.future, 10)
        assert sent.topic == early.name
    finally:
        await producer.stop()


async def test_the_linger_spaces_a_nodes_requests_rather_than_holding_each_record(cluster: Cluster) -> None:
    """A record for a node that had no request for a linger goes at once; the records right
    behind it wait out the rest of that linger, and then go together."""
    s = cluster.settings
    topic = topics.upstream(s)
    await topics.ensure_topics(s, [topic])
    producer = drain_whole_nodes(AIOKafkaProducer(**client_kwargs(s), acks="all", linger_ms=10_000))
    await producer.start()
    try:
        first = await producer.send(topic.name, b"first", partition=0)
        assert (await asyncio.wait_for(first, 5)).offset == 0  # not after its 10 s linger
        behind = [await producer.send(topic.name, b"behind", partition=p) for p in (0, 1)]
        await asyncio.sleep(1)
        assert not any(sent.done() for sent in behind)  # the node had a request a second ago
        assert [(await asyncio.wait_for(sent, 30)).offset for sent in behind] == [1, 0]
    finally:
        await producer.stop()


async def test_a_busy_nodes_requests_are_spaced_by_the_linger_an_idle_nodes_not(cluster: Cluster) -> None:
    """With ``busy_records``, the spacing is the share of them the node was sent in the last
    linger: after a record or two the next request goes at once, after a burst a linger later."""
    s = cluster.settings
    topic = topics.upstream(s)
    await topics.ensure_topics(s, [topic])
    producer = drain_whole_nodes(AIOKafkaProducer(**client_kwargs(s), acks="all", linger_ms=4_000), busy_records=64)
    await producer.start()
    try:
        for offset in (0, 1):  # the second a request after the first (a 64th of the linger)
            sent = await producer.send(topic.name, b"quiet", partition=0)
            assert (await asyncio.wait_for(sent, 2)).offset == offset
        burst = [await producer.send(topic.name, b"burst", partition=0) for _ in range(64)]
        assert (await asyncio.wait_for(asyncio.gather(*burst), 10))[-1].offset == 65
        behind = await producer.send(topic.name, b"behind", partition=0)
        await asyncio.sleep(2)
        assert not behind.done()  # 66 records within the linger: the node is busy
        assert (await asyncio.wait_for(behind, 30)).offset == 66
    finally:
        await producer.stop()


async def _topic_of_small_batches(s: Settings, name: str) -> str:
    """A new topic whose broker refuses any batch over 1 KiB (``max.message.bytes``)."""
    topic = f"{s.namespace}{name}"
    admin = AIOKafkaAdminClient(**client_kwargs(s))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": "1024"})])
    finally:
        await admin.close()
    assert await wait_until_served(s, [topic])
    return topic


async def test_a_record_the_broker_refused_fails_every_later_flush(cluster: Cluster) -> None:
    """Faust flushes the producer before each commit: a flush that raises commits nothing.

    The idempotent producer sends a batch again until the broker takes it, so what fails a
    record is an error that retrying cannot mend: here, a record over the topic's
    ``max.message.bytes``.
    """
    s = cluster.settings
    small = await _topic_of_small_batches(s, "small-records")
    elsewhere = topics.upstream(s)
    await topics.ensure_topics(s, [elsewhere])
    producer = create_app(s, topics.logic_group(s), topics.logic_topics(s), autodiscover=[]).producer
    await producer.start()
    try:
        taken = await producer.send(small, b"k", b"taken", None, None, None)
        await producer.flush()
        assert (await taken).offset == 0

        refused = await producer.send(small, b"k", os.urandom(4096), None, None, None)  # lz4 cannot shrink it
        with pytest.raises(KafkaError):
            await asyncio.wait_for(refused, 30)

        # The broker takes new records (elsewhere: aiokafka's sequence numbers for this
        # partition are spoiled), but no flush succeeds again.
        later = await producer.send(elsewhere.name, b"k", b"later", None, None, None)
        assert (await asyncio.wait_for(later, 30)).offset == 0
        with pytest.raises(ProducerSendError):
            await producer.flush()
        assert producer.crash_reason is not None  # the worker stops
    finally:
        await producer.stop()


async def test_appended_records_keep_their_order_and_a_refused_one_fails_every_later_flush(
        cluster: Cluster) -> None:
    """``Producer.append`` (the worker's changelog records, pushes and tasks) puts records in
    their batches without a future each: they keep their order past a full batch, and a
    batch the broker refuses stops commits as a refused ``send`` does."""
    s = cluster.settings.model_copy(update={"producer_max_batch_bytes": 16 * 1024})
    small = await _topic_of_small_batches(s, "small-batches")
    topic = topics.upstream(s)
    await topics.ensure_topics(s, [topic])
    producer = create_app(s, topics.logic_group(s), topics.logic_topics(s), autodiscover=[]).producer
    await producer.start()
    try:
        # 40 KB: more than a batch (16 KiB here), so later records wait for the first batch to go.
        values = [os.urandom(500).hex().encode()[:1000] for _ in range(40)]
        appended = [await producer.append(topic.name, b"k", value, 0) for value in values]
        assert len({id(batch) for batch, _ in appended}) > 1
        await producer.flush()
        last_batch, last_offset = appended[-1]
        assert (await last_batch.future).offset + last_offset == len(values) - 1
        records = await consume_all(s, [topic.name], lambda rs: len(rs) >= len(values))
        assert [(r.partition, r.offset, r.value) for r in records] == [(0, n, v) for n, v in enumerate(values)]

        with pytest.raises(MessageSizeTooLargeError):  # over max_request_size: refused at once, as send does
            await producer.append(topic.name, b"k", b"x" * (s.producer_max_request_bytes + 1))
        await producer.append(small, b"k", os.urandom(4096))  # over the topic's limit: the broker refuses it
        with pytest.raises(ProducerSendError):
            await asyncio.wait_for(producer.flush(), 30)
        assert producer.crash_reason is not None  # the worker stops
    finally:
        await producer.stop()


async def test_an_idempotent_producer_writes_a_record_once_through_a_frozen_broker(cluster: Cluster) -> None:
    """An idempotent producer never gives a batch up: it is sent again until the broker takes it, once
    (KIP-98), though the broker also gets the first request when it wakes; Faust's flush, so its commit,
    waits for it."""
    broker = cluster.stack.start_broker(free_port())  # of this test's own, to freeze
    broker_proc = cluster.stack.procs[-1][1]
    s = cluster.settings.model_copy(update={"broker_url": broker})
    app = create_app(s, topics.logic_group(s), topics.logic_topics(s), autodiscover=[])
    app.conf.producer_request_timeout = 2.0
    producer = app.producer
    topic = topics.upstream(s)
    await topics.ensure_topics(s, [topic])
    await producer.start()
    try:
        taken = await producer.send(topic.name, b"k", b"taken", None, None, None)
        await producer.flush()
        assert (await taken).offset == 0

        os.kill(broker_proc.pid, signal.SIGSTOP)
        try:
            retried = await producer.send(topic.name, b"k", b"retried", None, None, None)
            # Frozen for several request timeouts: the request times out and is sent again.
            await asyncio.sleep(3 * 2.0)
            assert not retried.done()
        finally:
            os.kill(broker_proc.pid, signal.SIGCONT)

        later = await producer.send(topic.name, b"k", b"later", None, None, None)
        await asyncio.wait_for(producer.flush(), 60)
        assert [(await retried).offset, (await later).offset] == [1, 2]
        assert producer.crash_reason is None
    finally:
        await producer.stop()
    records = await consume_all(s, [topic.name], lambda rs: len(rs) >= 3)
    assert [r.value for r in records] == [b"taken", b"retried", b"later"]


async def _batch_producer_ids(s: Settings, tp: TopicPartition) -> list[int]:
    """The producer id of each record batch in ``tp``, as the broker stores it (-1: not an idempotent producer)."""
    client = AIOKafkaClient(**client_kwargs(s))
    await client.bootstrap()
    try:
        client.add_topic(tp.topic)
        await client.force_metadata_update()
        fetch = FetchRequest(0, 1, 16 * 1024 * 1024, 0, [(tp.topic, [(tp.partition, 0, 16 * 1024 * 1024)])])
        response = await client.send(client.cluster.leader_for_partition(tp), fetch)
        ids = []
        for _, partitions in response.topics:
            for _, error_code, _, *data in partitions:
                assert error_code == 0, error_code
                records = MemoryRecords(data[-1])
                while (batch := records.next_batch()) is not None:
                    ids.append(batch.producer_id)
        return ids
    finally:
        await client.close()


async def test_every_producer_is_idempotent(cluster: Cluster) -> None:
    """A retried batch is not written twice: the broker knows each producer by its id and sequence (KIP-98)."""
    s = cluster.settings
    topic = topics.upstream(s)
    await topics.ensure_topics(s, [topic])
    # The producer of the gateways, the monitor and the dead-letters command (kafka.py).
    producer = AIOKafkaProducer(**producer_kwargs(s))
    await producer.start()
    try:
        ours = await (await producer.send(topic.name, b"ours", key=b"k"))
    finally:
        await producer.stop()
    # The workers' (compat/aiokafka.py).
    app = create_app(s, topics.logic_group(s), topics.logic_topics(s), autodiscover=[])
    faust_producer = app.producer
    await faust_producer.start()
    try:
        faust = await (await faust_producer.send(topic.name, b"k", b"faust's", None, None, None))
        await faust_producer.flush()
    finally:
        await faust_producer.stop()

    assert ours.partition == faust.partition
    [first, second] = await _batch_producer_ids(s, TopicPartition(topic.name, ours.partition))
    assert first >= 0 and second >= 0 and first != second
