"""What an agent decided to send, apart from sending it, so that sends can be retried alone."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import faust


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: faust.TopicT
    key: str
    value: bytes
    headers: Mapping[str, bytes] | None = None


async def send_all(records: Iterable[Outgoing]) -> None:
    """Hand each record to the app's producer, in order; Faust flushes it before every commit.

    Straight into the producer's batches (compat/aiokafka.py ``Producer.append``) rather
    than ``Topic.send``: the topic's per-message FutureMessage, callbacks and sensors cost
    as much again as the produce itself (shared/MEASURED.md), and nothing here awaits the
    record's metadata.
    """
    for record in records:
        topic = record.topic
        await topic.app.producer.append(topic.get_topic_name(), record.key.encode(), record.value, None,
                                        list(record.headers.items()) if record.headers else None)
