"""The aiokafka metadata fix of compat/aiokafka.py, against the real broker."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer

from gochat_streams import topics
from gochat_streams.compat.aiokafka import track_topic
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
