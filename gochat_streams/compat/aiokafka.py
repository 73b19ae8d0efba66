"""Faust's aiokafka transport with a producer that keeps its topics in the metadata it asks for.

aiokafka (0.14) sends to a topic that an earlier *full* metadata fetch knew without
adding it to the topics its client tracks. As soon as any other topic is tracked (the
first send to a topic created later, such as a gateway's downstream topic or a new
changelog), metadata requests name only the tracked topics, every refresh drops the
untracked one from the cluster view, and its batches wait for a partition leader for
ever. Faust commits only after the producer has flushed, so the worker stalls: seen
with ``im-user-topic`` batches stuck while 1,000 users joined a group, on any broker.
This producer tracks each topic before its first send.
"""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaProducer
from faust.transport.drivers import aiokafka as faust_aiokafka


def track_topic(producer: AIOKafkaProducer, topic: str) -> None:
    """Make ``topic`` part of every metadata request of ``producer``'s client."""
    client = producer.client
    if topic not in client._topics:  # the set that add_topic maintains
        client.add_topic(topic)


class Producer(faust_aiokafka.Producer):
    async def send(self, topic: str, *args: Any, **kwargs: Any) -> Any:
        track_topic(self._ensure_producer(), topic)
        return await super().send(topic, *args, **kwargs)


class Transport(faust_aiokafka.Transport):
    Producer = Producer
