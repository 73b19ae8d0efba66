"""``raw``: the ceiling. A bare aiokafka consume -> produce loop through the same broker.

Records (200-byte JSON, keyed like the upstream) are first written to a topic with the
spec's upstream partition count; then the clock runs while a consumer reads them in
batches and produces them to the same partition of a second topic, a record batch per
fetched batch (lz4, acks=all; up to ``MAX_IN_FLIGHT`` batches wait for acknowledgement),
until the last one is acknowledged.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from gochat_streams.kafka import client_kwargs, producer_kwargs
from gochat_streams.settings import Settings
from gochat_streams.topics import TopicSpec, ensure_topics, min_insync_replicas

from .common import WAIT_S, send_batches, text_message


#: Sends not yet acknowledged before the loop waits for them.
MAX_IN_FLIGHT = 1_000


async def run_raw(s: Settings, records: int) -> dict[str, Any]:
    source, sink = f"{s.namespace}raw-in", f"{s.namespace}raw-out"
    partitions = s.upstream_partitions
    # Replicated as the upstream topic is, so the ceiling pays what the pipeline's records pay.
    replicas = s.upstream_replicas
    await ensure_topics(s, [TopicSpec(name, "sender", "json", partitions, replicas, 3_600_000, s.compression,
                                      min_insync_replicas(s, replicas)) for name in (source, sink)])
    producer = AIOKafkaProducer(**{**producer_kwargs(s), "linger_ms": 5, "max_batch_size": 256 * 1024})
    await producer.start()
    try:
        values = [json.dumps(text_message(i, f"s{i % 1000}", f"u{i % 5000}")).encode() for i in range(records)]
        sends = [await producer.send(source, value, key=f"s{i % 1000}".encode()) for i, value in enumerate(values)]
        await asyncio.gather(*sends)
        consumer = AIOKafkaConsumer(source, **client_kwargs(s), group_id=f"{s.namespace}raw", auto_offset_reset="earliest",
                                    enable_auto_commit=False, max_partition_fetch_bytes=4 * 1024 * 1024)
        await consumer.start()
        try:
            started = time.perf_counter()
            moved, in_flight = 0, []
            async with asyncio.timeout(WAIT_S):
                while moved < records:
                    for tp, rs in (await consumer.getmany(timeout_ms=200, max_records=5000)).items():
                        in_flight += await send_batches(producer, sink, tp.partition, rs)
                        moved += len(rs)
                    if len(in_flight) > MAX_IN_FLIGHT:  # bounded memory; the producer keeps batching meanwhile
                        await asyncio.gather(*in_flight)
                        in_flight = []
                await asyncio.gather(*in_flight)
            seconds = time.perf_counter() - started
        finally:
            await consumer.stop()
    finally:
        await producer.stop()
    return {"scenario": "raw", "records": moved, "seconds": round(seconds, 3), "msgs_per_s": round(moved / seconds, 1)}
