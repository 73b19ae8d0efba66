"""The Faust producer of compat/aiokafka.py, against the real broker."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from faust.exceptions import ProducerSendError

from gochat_streams import topics
from gochat_streams.app import create_app
from gochat_streams.compat.aiokafka import track_topic
from gochat_streams.devstack import free_port
from gochat_streams.kafka import client_kwargs

from .conftest import Cluster

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


async def test_a_record_the_broker_never_took_fails_every_later_flush(cluster: Cluster) -> None:
    """Faust flushes the producer before each commit: a flush that raises commits nothing."""
    # A broker of this test's own, to freeze.
    broker = cluster.stack.start_broker(free_port())
    broker_proc = cluster.stack.procs[-1][1]
    s = cluster.settings.model_copy(update={"broker_url": broker})
    app = create_app(s, topics.logic_group(s), autodiscover=[])
    app.conf.producer_request_timeout = 2.0
    topic = topics.upstream(s)
    await topics.ensure_topics(s, [topic])
    producer = app.producer
    await producer.start()
    try:
        taken = await producer.send(topic.name, b"k", b"taken", None, None, None)
        await producer.flush()
        assert (await taken).offset == 0

        os.kill(broker_proc.pid, signal.SIGSTOP)
        try:
            lost = await producer.send(topic.name, b"k", b"lost", None, None, None)
            with pytest.raises(KafkaError):
                await asyncio.wait_for(lost, 30)
        finally:
            os.kill(broker_proc.pid, signal.SIGCONT)

        # The broker is back and takes new records, but no flush succeeds again.
        later = await producer.send(topic.name, b"k", b"later", None, None, None)
        assert (await asyncio.wait_for(later, 30)).offset >= 1
        with pytest.raises(ProducerSendError):
            await producer.flush()
        assert producer.crash_reason is not None  # the worker stops
    finally:
        await producer.stop()
